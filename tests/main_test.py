"""The two-stage main job: resume after an interruption, skipping finished stages, data errors, `paper`."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from tests.conftest import tiny_config
from tokpre import main
from tokpre import sharding as shd
from tokpre.checkpoint import StageCheckpointer
from tokpre.train import dyn, loop


def _final_dyn_params(cfg, work):
    mesh = shd.make_mesh((1, 1, 1))
    _, _, _, _, _, _, state, sh = dyn.build(cfg, mesh)
    return StageCheckpointer(work / "dyn" / "checkpoints").restore_params(None, state.params, sh.params)


def test_interrupted_run_resumes_to_the_same_parameters(tiny_data, tmp_path, monkeypatch, capsys):
    base, _ = tiny_data
    cfg = tiny_config(base, ae=4, dyn=6)
    main.run(cfg, tmp_path / "straight")
    want = _final_dyn_params(cfg, tmp_path / "straight")

    class Preempted(Exception):
        pass

    def interrupt(name, step):
        if name == "dyn" and step == 3:
            raise Preempted
    monkeypatch.setattr(loop, "after_step_hook", interrupt)
    with pytest.raises(Preempted):
        main.run(tiny_config(base, ae=4, dyn=6), tmp_path / "interrupted")
    monkeypatch.setattr(loop, "after_step_hook", lambda name, step: None)
    capsys.readouterr()
    main.run(tiny_config(base, ae=4, dyn=6), tmp_path / "interrupted")
    out = capsys.readouterr().out
    assert "[ae] finished at step 4; skipping" in out
    assert "[dyn] resumed from step 2" in out
    assert "Rollout VRMSE" in out
    got = _final_dyn_params(cfg, tmp_path / "interrupted")
    for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

    main.run(tiny_config(base, ae=4, dyn=6), tmp_path / "interrupted")
    assert "[dyn] finished at step 6; skipping" in capsys.readouterr().out
    assert (tmp_path / "interrupted" / "config.json").exists()


def test_missing_real_dataset_names_path_and_download(tiny_data, tmp_path):
    cfg = tiny_config(str(tmp_path / "nowhere"))
    cfg.stages = ("ae",)
    cfg.ae.datasets = ("turbulent_radiative_layer_2D",)
    with pytest.raises(FileNotFoundError, match=r"turbulent_radiative_layer_2D/data/train.*the-well-download"):
        main.run(cfg, tmp_path / "w")


def test_missing_embedded_dataset_is_generated(tmp_path, capsys):
    cfg = tiny_config(str(tmp_path / "data"), ae=1)
    cfg.stages = ("ae",)
    cfg.ae.datasets = ("gray_scott_reaction_diffusion",)
    cfg.data.generate_missing = True
    cfg.data.generate.update(resolution=16, n_trajectories=18, n_steps=6)
    main.run(cfg, tmp_path / "w")
    assert "generating it (embedded system)" in capsys.readouterr().out
    assert (tmp_path / "data" / "gray_scott_reaction_diffusion" / "stats.yaml").exists()


def test_unknown_stage_is_rejected(tiny_data, tmp_path):
    cfg = tiny_config(tiny_data[0])
    cfg.stages = ("ae", "distill")
    with pytest.raises(ValueError, match="config key stages"):
        main.run(cfg, tmp_path)
