"""Stage 2: the AE warm start (bitwise), frozen mode, the path-naming mismatch error, the latent cache."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.conftest import tiny_config
from tokpre import main
from tokpre import sharding as shd
from tokpre.checkpoint import StageCheckpointer, TreeMismatchError
from tokpre.data import pipeline
from tokpre.data.fields import FieldVocab
from tokpre.train import ae, dyn
from tokpre.train.state import make_train_step


@pytest.fixture(scope="module")
def ae_run(tiny_data, tmp_path_factory):
    base, _ = tiny_data
    work = tmp_path_factory.mktemp("ae_run")
    cfg = tiny_config(base, ae=4)
    cfg.stages = ("ae",)
    main.run(cfg, work)
    return work


def _ae_params(cfg, work):
    mesh = shd.make_mesh((1, 1, 1))
    _, _, state, sh = ae.build(cfg, mesh)
    return StageCheckpointer(work / "ae" / "checkpoints").restore_params(None, state.params, sh.params)


def _restored_state(cfg, work, mode):
    cfg.dyn.tokeniser = mode
    mesh = shd.make_mesh((1, 1, 1))
    model, comp, _, trainable, tx, init, state, sh = dyn.build(cfg, mesh)
    restored = dyn.restore_tokeniser(work / "ae" / "checkpoints", state.params["tokeniser"],
                                     sh.params["tokeniser"], vocab_paths=set(), vocab=FieldVocab())
    return model, comp, trainable, tx, dyn.warm_start(state, restored)


def _assert_trees_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize("mode", ["finetune", "frozen"])
def test_warm_start_equals_ae_checkpoint_bitwise(tiny_data, ae_run, mode):
    cfg = tiny_config(tiny_data[0])
    _, _, _, _, state = _restored_state(cfg, ae_run, mode)
    _assert_trees_equal(state.params["tokeniser"], _ae_params(cfg, ae_run))


def test_frozen_mode_trains_only_the_processor(tiny_data, ae_run):
    base, name = tiny_data
    cfg = tiny_config(base)
    model, comp, trainable, tx, state = _restored_state(cfg, ae_run, "frozen")
    assert trainable == ("processor",)
    # No optimiser state for the tokeniser: the optimiser only sees the processor.
    n_opt = sum(x.size for x in jax.tree.leaves(state.opt_state))
    n_proc = sum(x.size for x in jax.tree.leaves(state.params["processor"]))
    assert n_opt <= 3 * n_proc + 16
    before = jax.tree.map(np.asarray, state.params)
    it = pipeline.make_train_iterator(base, name, n_steps_input=2, n_steps_output=1, batch_size=4, seed=0)
    step = jax.jit(make_train_step(dyn.make_field_loss(model, periodic=(True, True), comp=comp, kind="mse"), tx,
                                   trainable))
    for _ in range(3):
        b = next(it)
        state, _ = step(state, {k: jnp.asarray(b[k]) for k in ("input_fields", "output_fields", "field_ids")})
    _assert_trees_equal(state.params["tokeniser"], before["tokeniser"])
    changed = [not np.array_equal(a, np.asarray(b)) for a, b in
               zip(jax.tree.leaves(before["processor"]), jax.tree.leaves(state.params["processor"]))]
    assert any(changed)


def test_mismatched_tokeniser_names_every_path(tiny_data, ae_run):
    cfg = tiny_config(tiny_data[0])
    cfg.model.tokeniser.latent_channels = 4   # the AE was trained with 8
    with pytest.raises(TreeMismatchError) as e:
        _restored_state(cfg, ae_run, "finetune")
    msg = str(e.value)
    assert str(ae_run / "ae" / "checkpoints") in msg
    assert "shape mismatch at ['encoder']['to_latent']['kernel']: checkpoint (1, 1, 1, 16, 8), model (1, 1, 1, 16, 4)" \
        in msg
    assert "['decoder']['from_latent']['kernel']" in msg
    assert "latent_channels" in msg


def test_missing_ae_checkpoint_is_explained(tiny_data, tmp_path):
    cfg = tiny_config(tiny_data[0])
    cfg.dyn.tokeniser = "finetune"
    mesh = shd.make_mesh((1, 1, 1))
    _, _, _, _, _, _, state, sh = dyn.build(cfg, mesh)
    with pytest.raises(FileNotFoundError, match="dyn.ae_checkpoint"):
        dyn.restore_tokeniser(tmp_path / "nope", state.params["tokeniser"], sh.params["tokeniser"],
                              vocab_paths=set(), vocab=FieldVocab())


def test_frozen_with_latent_cache_runs_and_keeps_tokeniser(tiny_data, ae_run, tmp_path):
    import shutil
    base, name = tiny_data
    work = tmp_path / "run"
    shutil.copytree(ae_run / "ae", work / "ae")
    cfg = tiny_config(base, dyn=4)
    cfg.stages = ("dyn",)
    cfg.dyn.tokeniser = "frozen"
    cfg.dyn.cache_latents = True
    main.run(cfg, work)
    res = json.loads((work / "dyn" / "rollout.json").read_text())
    assert np.asarray(res["vrmse"]).shape == (3, 5)
    mesh = shd.make_mesh((1, 1, 1))
    _, _, _, _, _, _, state, sh = dyn.build(cfg, mesh)
    final = StageCheckpointer(work / "dyn" / "checkpoints").restore_params(None, state.params, sh.params)
    _assert_trees_equal(final["tokeniser"], _ae_params(cfg, ae_run))
