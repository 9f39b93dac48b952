"""Tests of ``tokpre.checkpoint.load_run`` and ``tokpre.analyse`` on a tiny two-stage run trained in tmp."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from tokpre import analyse
from tokpre.checkpoint import load_config, load_run
from tokpre.config import base_config
from tokpre.data.generate import generate_dataset

DATASET = "euler_multi_quadrants_periodicBC"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def tiny_config(base: Path):
    c = base_config()
    c.data.well_base_path = str(base)
    c.data.batch_size = 4
    t = c.model.tokeniser
    t.widths, t.latent_channels, t.depth = (8, 16), 8, 0
    t.spatial_factors, t.temporal_factors = (4,), (1,)     # one compression: one compile per evaluation
    p = c.model.processor
    p.d_model, p.num_layers, p.num_heads = 32, 1, 2
    c.ae.steps, c.dyn.steps = 3, 3
    for s in (c.ae, c.dyn):
        s.log_every, s.ckpt_every = 3, 3
    c.ae.compressions = ((1, 4),)
    c.ae.optimizer.name = "adamw"                           # SOAP's step takes much longer to compile
    c.dyn.eval_every = 3
    c.dyn.rollout_max_steps, c.dyn.rollout_trajectories = 4, 1
    return c


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    from tokpre import main
    root = tmp_path_factory.mktemp("analyse")
    # 3 trajectories of one gamma: one per split; 10 frames leave 4 input + 4 rollout steps in the test split.
    generate_dataset(root / "data", DATASET, resolution=16, n_trajectories=3, n_steps=10, gammas=(1.4,), log=None)
    wd = root / "tiny"
    main.run(tiny_config(root / "data"), wd)
    return wd


def _stored_params(workdir: Path, stage: str, step: int):
    with ocp.PyTreeCheckpointer() as ckptr:
        return ckptr.restore(workdir / stage / "checkpoints" / str(step) / "state")["params"]


@pytest.mark.filterwarnings("ignore:Sharding info not provided")
def test_load_run_restores_checkpoint_params(workdir):
    run = load_run(workdir)                                        # default: the dyn stage, latest step
    assert (run.stage, run.step, run.compression) == ("dyn", 3, (1, 4))
    assert set(run.params) == {"tokeniser", "processor"}
    assert run.config.model.tokeniser.widths == (8, 16)           # JSON lists are tuples again
    assert run.periodic == (True, True) and len(run.field_names) == len(run.field_ids) == 5
    for stage, r in (("dyn", run), ("ae", load_run(workdir, "ae", 3))):
        stored = _stored_params(workdir, stage, 3)
        got, want = jax.tree_util.tree_flatten_with_path(r.params)[0], jax.tree_util.tree_flatten_with_path(stored)[0]
        assert [jax.tree_util.keystr(p) for p, _ in got] == [jax.tree_util.keystr(p) for p, _ in want]
        for (path, a), (_, b) in zip(got, want):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=f"{stage} {jax.tree_util.keystr(path)}")
    x = np.zeros((1, int(run.config.dyn.n_steps_input), 16, 16, 5), np.float32)
    assert run.apply(x).shape == (1, 1, 16, 16, 5)                # the next frame


def test_missing_workdir_and_checkpoint_errors(workdir, tmp_path):
    missing = tmp_path / "no_such_run"
    with pytest.raises(FileNotFoundError, match="no_such_run"):
        load_run(missing)
    with pytest.raises(FileNotFoundError, match="no_such_run"):
        analyse.analyse([missing])
    bare = tmp_path / "bare"
    bare.mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_run(bare)
    shutil.copy(workdir / "config.json", bare / "config.json")
    with pytest.raises(FileNotFoundError, match=r"bare/ae/checkpoints"):
        load_run(bare)                                             # no dyn -> ae by default, and ae is missing too
    with pytest.raises(FileNotFoundError, match="step 7"):
        load_run(workdir, "ae", 7)
    assert load_config(workdir).dyn.compression == (1, 4)


def _check_pngs(out: Path, names: list[str]) -> None:
    for name in names:
        data = (out / name).read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 1000, name


def test_analyse_two_runs_all_stages(workdir, tmp_path):
    out = analyse.analyse([workdir, workdir], out=tmp_path / "report", stage="all",
                          options=analyse.Options(snapshot_steps=(1, 4), snapshot_fields=("density", "pressure")))
    doc = json.loads((out / "metrics.json").read_text())
    assert set(doc["runs"]) == {"tiny/ae", "tiny/dyn", "tiny-2/ae", "tiny-2/dyn"}
    dyn_res, ae_res = doc["runs"]["tiny/dyn"], doc["runs"]["tiny/ae"]
    assert (dyn_res["n_steps"], dyn_res["n_trajectories"]) == (4, 1)
    for kind in ("rollout", "one_step"):
        r = dyn_res[kind]
        assert np.asarray(r["vrmse"]).shape == (4, 5) and np.all(np.isfinite(r["vrmse"]))
        assert {"full_VRMSE_T=all", "density_VRMSE_T=0:1", "full_NRMSE_T=all"} <= set(r["summary"])
        assert set(r["neps"]["bands"]["mean"]) == {"low", "mid", "high"}
        assert len(r["neps"]["wavenumber"]) == len(r["neps"]["mean"]) == 9          # shells |k| = 0..8 on 16^2
    # The first one-step prediction is the first rollout step; the rollout matches the stage's own rollout.json.
    np.testing.assert_allclose(dyn_res["one_step"]["vrmse"][0], dyn_res["rollout"]["vrmse"][0], rtol=1e-5)
    stage_rollout = json.loads((workdir / "dyn" / "rollout.json").read_text())
    np.testing.assert_allclose(dyn_res["rollout"]["vrmse"], stage_rollout["vrmse"], rtol=1e-4)
    rec = ae_res["reconstruction"]["1,4"]
    assert set(rec["fields"]) == set(ae_res["field_names"]) and rec["ratio"] == pytest.approx(10.0)
    stage_rec = json.loads((workdir / "ae" / "reconstruction.json").read_text())[DATASET]["1,4"]
    assert rec["mean"] == pytest.approx(stage_rec["mean"], rel=1e-4)
    assert set(rec["neps"]["bands"]["fields"]["density"]) == {"low", "mid", "high"}

    report = (out / "report.md").read_text()
    for text in ("## Rollout VRMSE", "### tiny-2/dyn: rollout", "### tiny/dyn: one-step", "| window | energy |",
                 "## NEPS of the rollout", "## AE reconstruction", "NEPS low", "## Training", "![training]"):
        assert text in report, text
    pngs = ["rollout_vrmse.png", "neps.png", "neps_ae.png", "training.png", "snapshots_tiny_dyn_density.png",
            "snapshots_tiny-2_ae_pressure.png"]
    assert set(pngs) <= set(doc["files"]) and "snapshots_tiny_dyn_energy.png" not in doc["files"]
    _check_pngs(out, doc["files"])


def test_cli_default_stage(workdir, tmp_path, capsys):
    out = tmp_path / "cli"
    assert analyse.main([f"--workdir={workdir}", f"--out={out}", "--labels=mine", "--snapshot_steps=2"]) == 0
    assert f"report written to {out}" in capsys.readouterr().out
    doc = json.loads((out / "metrics.json").read_text())
    assert list(doc["runs"]) == ["mine"] and doc["runs"]["mine"]["stage"] == "dyn"
    assert np.asarray(doc["runs"]["mine"]["rollout"]["vrmse"]).shape == (4, 5)
    _check_pngs(out, ["rollout_vrmse.png", "neps.png", "training.png", "snapshots_mine_momentum_x.png"])
    with pytest.raises(ValueError, match="one label per --workdir"):
        analyse.main([f"--workdir={workdir}", "--labels=a,b"])
