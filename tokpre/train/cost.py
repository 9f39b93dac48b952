"""Abstract (allocation-free) train steps of each stage: parameter counts and per-step FLOPs.

Used to size configs that cannot run here (the ``paper`` variants), and to report each arm's compute.
Everything goes through ``jax.eval_shape`` and ``jit(...).lower(...)``: no parameter or batch is allocated.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from tokpre.train import ae, common, dyn
from tokpre.train.optim import make_optimizer
from tokpre.train.state import TrainState, make_train_step, split_trainable


def _abstract_state(init, tx, trainable=None):
    def make(key):
        params = nn.unbox(init(key))
        tr, _ = split_trainable(params, trainable)
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(tr),
                          rng=jax.random.key_data(key), bad_steps=jnp.zeros((), jnp.int32))
    return jax.eval_shape(make, jax.random.key(0))


def abstract_step(cfg, stage: str, resolution: Sequence[int], n_channels: int, batch_size: int | None = None,
                  compression: tuple[int, int] | None = None):
    """``(step_fn, abstract_state, abstract_batch)`` for one train step of ``stage`` ('ae' or 'dyn')."""
    bs = int(batch_size or cfg.data.batch_size)
    d = len(resolution)
    periodic = (True,) * d
    ids = jax.ShapeDtypeStruct((n_channels,), jnp.int32)
    if stage == "ae":
        model = common.tokeniser_from_config(cfg)
        tx, _ = make_optimizer(cfg.ae.optimizer)
        comp = compression or min(ae.compressions_of(cfg), key=lambda c: (c[1], c[0]))
        loss = ae.make_loss_fn(model, periodic=periodic, compression=comp, loss=str(cfg.ae.loss),
                               jitter=bool(cfg.ae.jitter))
        state = _abstract_state(ae.init_fn(model, cfg), tx)
        batch = {"input_fields": jax.ShapeDtypeStruct((bs, int(cfg.ae.n_frames), *resolution, n_channels),
                                                      jnp.float32), "field_ids": ids}
        return make_train_step(loss, tx), state, batch
    if stage == "dyn":
        model = dyn.emulator_from_config(cfg)
        comp = compression or dyn.compression_of(cfg)
        tx, _ = make_optimizer(cfg.dyn.optimizer)
        trainable = ("processor",) if str(cfg.dyn.tokeniser) == "frozen" else None
        state = _abstract_state(dyn.init_fn(model, cfg, comp), tx, trainable)
        n_in = int(cfg.dyn.n_steps_input)
        batch = {"input_fields": jax.ShapeDtypeStruct((bs, n_in, *resolution, n_channels), jnp.float32),
                 "output_fields": jax.ShapeDtypeStruct((bs, comp[0], *resolution, n_channels), jnp.float32),
                 "field_ids": ids}
        loss = dyn.make_field_loss(model, periodic=periodic, comp=comp, kind=str(cfg.dyn.loss))
        return make_train_step(loss, tx, trainable), state, batch
    raise ValueError(f"unknown stage {stage!r}; expected 'ae' or 'dyn'")


def param_count(tree) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))


def step_flops(step_fn, state, batch) -> float:
    """FLOPs of one compiled train step from XLA's cost analysis of the lowered step (abstract inputs)."""
    lowered = jax.jit(step_fn).lower(state, batch)
    cost = lowered.compile().cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0]
    return float(cost.get("flops", float("nan")))
