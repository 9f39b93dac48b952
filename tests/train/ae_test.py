"""Stage 1: checkpoint round trip, non-finite handling, and the stage end to end on tiny data."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.conftest import tiny_config
from tokpre import sharding as shd
from tokpre.checkpoint import StageCheckpointer
from tokpre.data import pipeline, well
from tokpre.train import ae, loop
from tokpre.train.state import make_train_step


def _batch(base, name, bs=4, seed=0):
    it = pipeline.make_train_iterator(base, name, n_steps_input=2, n_steps_output=0, batch_size=bs, seed=seed)
    b = next(it)
    return {"input_fields": jnp.asarray(b["input_fields"]), "field_ids": jnp.asarray(b["field_ids"])}


def test_checkpoint_restore_is_bitwise_and_gives_same_next_loss(tiny_data, tmp_path):
    base, name = tiny_data
    cfg = tiny_config(base)
    mesh = shd.make_mesh((1, 1, 1))
    model, tx, state, state_sh = ae.build(cfg, mesh)
    step = jax.jit(make_train_step(ae.make_loss_fn(model, periodic=(True, True), compression=(1, 4), loss="mse",
                                                   jitter=True), tx))
    batch = _batch(base, name)
    for _ in range(3):
        state, _ = step(state, batch)
    ckpt = StageCheckpointer(tmp_path / "ckpt")
    ckpt.save(3, state, meta={"stage": "ae"})

    _, _, fresh, _ = ae.build(cfg, mesh)
    restored, meta = ckpt.restore(3, fresh, state_sh)
    assert meta == {"stage": "ae"}
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(restored)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    s1, m1 = step(state, batch)
    s2, m2 = step(restored, batch)
    assert float(m1["loss"]) == float(m2["loss"])
    for a, b in zip(jax.tree.leaves(s1.params), jax.tree.leaves(s2.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_nonfinite_loss_skips_update_and_stops_before_checkpoint(tiny_data, tmp_path):
    base, name = tiny_data
    cfg = tiny_config(base)
    mesh = shd.make_mesh((1, 1, 1))
    model, tx, state, state_sh = ae.build(cfg, mesh)
    good = ae.make_loss_fn(model, periodic=(True, True), compression=(1, 4), loss="mse", jitter=False)

    def poisoned(params, batch, rng):  # NaN loss whenever the batch says so
        lval, m = good(params, batch, rng)
        return jnp.where(batch["poison"] > 0, jnp.nan, lval), m

    step = jax.jit(make_train_step(poisoned, tx))
    batch = _batch(base, name)
    calls = {"n": 0}

    def next_batch():
        calls["n"] += 1
        return {**batch, "poison": jnp.asarray(1.0 if calls["n"] == 3 else 0.0)}

    ckpt = StageCheckpointer(tmp_path / "ckpt")
    with pytest.raises(loop.NonFiniteLossError, match=r"non-finite.*last good checkpoint \(step 2\)"):
        loop.run(name="ae", stage_dir=tmp_path, step_fn=step, state=state, next_batch=next_batch, total_steps=6,
                 ckpt=ckpt, log_every=2, ckpt_every=2)
    assert ckpt.all_steps() == [2]

    # The poisoned step left parameters untouched and counted itself.
    s, _ = step(state, {**batch, "poison": jnp.asarray(1.0)})
    assert int(s.bad_steps) == 1
    for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(s.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_ae_stage_learns_and_reports_every_ratio(tiny_data, tmp_path):
    from tokpre import main
    base, name = tiny_data
    cfg = tiny_config(base, ae=100)
    cfg.stages = ("ae",)
    cfg.ae.compressions = ((1, 4), (2, 8))
    cfg.ae.compression_weights = (2, 1)
    cfg.ae.eval_compressions = ((1, 4), (2, 8))
    cfg.ae.log_every = 25
    cfg.ae.ckpt_every = 50
    cfg.ae.eval_every = 50
    cfg.ae.eval_batches = 1
    cfg.ae.optimizer.update(name="adamw", lr=1e-2, warmup_steps=2)
    main.run(cfg, tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "ae" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["train/loss"] for r in rows if "train/loss" in r]
    assert losses[-1] < 0.85 * losses[0], losses
    evals = [r for r in rows if "eval/vrmse_t1_s4" in r]   # valid-split progress checks at steps 50 and 100
    assert [r["step"] for r in evals] == [50, 100] and all(np.isfinite(r["eval/vrmse_t2_s8"]) for r in evals)
    rep = json.loads((tmp_path / "ae" / "reconstruction.json").read_text())[name]
    assert set(rep) == {"1,4", "2,8"}
    # The final table reads every full batch of the test split, whatever ae.eval_batches says.
    n_test = well.WellSplit(base, name, "test").num_windows(int(cfg.ae.n_frames), 0, 1)
    assert rep["1,4"]["batches"] == n_test // int(cfg.data.batch_size) > 1
    assert rep["1,4"]["ratio"] == pytest.approx(16 * 5 / 8)   # (4*4 pixels * 5 fields) / 8 latent channels
    assert set(rep["1,4"]["fields"]) == {"energy", "density", "pressure", "momentum_x", "momentum_y"}
    assert all(np.isfinite(r["mean"]) for r in rep.values())
    assert StageCheckpointer(tmp_path / "ae" / "checkpoints").latest_step() == 100


def test_bad_compression_config_is_named(tiny_data):
    base, _ = tiny_data
    cfg = tiny_config(base)
    cfg.ae.compressions = ((1, 32),)
    with pytest.raises(ValueError, match="ae.compressions"):
        ae.compressions_of(cfg)
    cfg.ae.compressions = ((2, 4),)
    cfg.ae.n_frames = 3
    with pytest.raises(ValueError, match="ae.n_frames"):
        ae.compressions_of(cfg)


def test_compression_weights(tiny_data):
    base, _ = tiny_data
    cfg = tiny_config(base)
    comps = [(1, 4), (2, 8)]
    np.testing.assert_allclose(ae.compression_probabilities(cfg, comps), [0.5, 0.5])
    cfg.ae.compression_weights = (3, 1)
    np.testing.assert_allclose(ae.compression_probabilities(cfg, comps), [0.75, 0.25])
    for bad in ((1,), (1, -1), (0, 0)):
        cfg.ae.compression_weights = bad
        with pytest.raises(ValueError, match="ae.compression_weights"):
            ae.compression_probabilities(cfg, comps)
