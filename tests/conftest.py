"""Shared fixtures: a tiny embedded Euler dataset and a tiny two-stage config."""

from __future__ import annotations

import pytest

from tokpre.config import base_config

TINY_DATASET = "euler_multi_quadrants_periodicBC"


def tiny_config(base_path: str, **stage_steps):
    """A config small enough for a test: 16x16 Euler, 8-16 channel convs, a one-layer processor."""
    c = base_config()
    c.data.well_base_path = str(base_path)
    c.data.batch_size = 4
    c.data.generate_missing = False
    c.model.tokeniser.update(widths=(8, 16), latent_channels=8, depth=0)
    c.model.processor.update(d_model=32, num_layers=1, num_heads=2, mlp_ratio=2)
    c.ae.update(steps=stage_steps.get("ae", 4), compressions=((1, 4),), eval_compressions=((1, 4),),
                log_every=2, ckpt_every=2,
                eval_batches=1)
    c.ae.optimizer.update(name="adamw", lr=1e-3, warmup_steps=1)
    c.dyn.update(steps=stage_steps.get("dyn", 4), log_every=2, ckpt_every=2, eval_batches=1,
                 rollout_max_steps=3, rollout_trajectories=1, n_steps_input=2)
    c.dyn.optimizer.update(lr=1e-3, warmup_steps=1)
    c.mesh.shape = (1, 1, 1)
    return c


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """``(base_path, name)`` of a 16x16 periodic Euler dataset (generated once per test session)."""
    from tokpre.data.generate import generate_dataset
    base = tmp_path_factory.mktemp("well")
    generate_dataset(base, TINY_DATASET, resolution=16, n_trajectories=10, n_steps=12, gammas=(1.4,), log=None)
    return str(base), TINY_DATASET
