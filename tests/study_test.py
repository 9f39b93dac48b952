"""The pretraining study end to end at a tiny size: runs, report files and tables, resumability, config checks."""

from __future__ import annotations

import importlib.util
import json
import pathlib

import pytest

from tokpre import study
from tokpre.config import optimizer_config

ROOT = pathlib.Path(__file__).resolve().parents[1]
EULER, SHEAR = "euler_multi_quadrants_periodicBC", "shear_flow"
ARMS = ("scratch", "in_domain_frozen", "in_domain_finetune_s8")


def _study_config(variant: str = ""):
    spec = importlib.util.spec_from_file_location("study_cfg", ROOT / "configs" / "study.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.get_config(variant)


def tiny_study_config(base: str, docs: str):
    """configs/study.py:small shrunk to 16x16 data, a 1-layer processor, 4+4 steps, 2 seeds, 3 arms (one tokeniser)."""
    c = _study_config("small")
    c.data.well_base_path = base
    c.data.generate_missing = False
    c.data.batch_size = 4
    c.model.tokeniser.update(widths=(8, 16), latent_channels=8)
    c.model.processor.update(d_model=32, num_layers=1, num_heads=2, mlp_ratio=2)
    c.ae.update(steps=4, log_every=2, ckpt_every=2, eval_batches=1)
    c.ae.optimizer = optimizer_config("adamw", 1e-3, 4)
    c.dyn.update(steps=4, log_every=2, ckpt_every=2, eval_every=2, eval_batches=1, rollout_max_steps=2,
                 rollout_trajectories=1, n_steps_input=2)
    c.dyn.optimizer = optimizer_config("adamw", 1e-3, 4)
    c.study.seeds = (0, 1)
    c.study.arm_order = ARMS
    c.study.docs_dir = docs
    return c


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory):
    from tokpre.data.generate import generate_dataset
    base = tmp_path_factory.mktemp("study_data")
    generate_dataset(base, EULER, resolution=16, n_trajectories=10, n_steps=12, gammas=(1.4,), log=None)
    return str(base)


def test_configs_build_and_arms_are_consistent():
    for variant in ("small", "paper"):
        c = _study_config(variant)
        study.check_study_config(c)
        assert len(c.study.seeds) >= 3
        modes = {c.study.arms[a].mode for a in c.study.arm_order}
        assert modes == {"scratch", "finetune", "frozen"}
        sweep = {c.study.arms[a].compression[1] for a in c.study.arm_order
                 if c.study.arms[a].mode == "finetune" and c.study.arms[a].pretrain == "in_domain"}
        assert len(sweep) >= 2, f"{variant}: compression sweep needs >= 2 ratios, found {sweep}"
        assert tuple(c.study.pretrain.mixed) == (SHEAR, "gray_scott_reaction_diffusion")
        assert study.pretrain_names(c) == ["in_domain", "out_of_domain", "mixed"]
    with pytest.raises(ValueError, match="unknown variant"):
        _study_config("huge")


def test_bad_study_config_names_the_key():
    c = _study_config("small")
    c.study.arms.scratch.mode = "thawed"
    with pytest.raises(ValueError, match=r"study\.arms\.scratch\.mode"):
        study.check_study_config(c)
    c = _study_config("small")
    c.study.arms.mixed_finetune.pretrain = "nowhere"
    with pytest.raises(ValueError, match=r"study\.arms\.mixed_finetune\.pretrain"):
        study.check_study_config(c)


def test_tiny_study_end_to_end_report_and_resume(tiny_base, tmp_path, capsys):
    docs = tmp_path / "docs"
    cfg = tiny_study_config(tiny_base, str(docs))
    sdir = tmp_path / "study"
    done = study.run_study(cfg, sdir)
    assert done["skipped"] == []
    assert len(done["trained"]) == 1 + len(ARMS) * 2          # the in_domain AE, 3 arms x 2 seeds
    # per-arm workdirs, each a tokpre.main workdir with its stage's outputs
    assert (sdir / "ae" / "in_domain" / "ae" / "reconstruction.json").exists()
    assert not (sdir / "ae" / "mixed").exists() and not (sdir / "ae" / "out_of_domain").exists()  # unused here
    for arm in ARMS:
        for seed in (0, 1):
            wd = study.arm_workdir(sdir, arm, seed)
            assert (wd / "dyn" / "rollout.json").exists()
            assert json.loads((wd / "config.json").read_text())["seed"] == seed
    # the s=8 arm uses the same in-domain tokeniser at another ratio
    c8 = json.loads((study.arm_workdir(sdir, "in_domain_finetune_s8", 0) / "config.json").read_text())
    assert c8["dyn"]["compression"] == [1, 8]
    assert c8["dyn"]["ae_checkpoint"].endswith("ae/in_domain/ae/checkpoints")

    res = study.report(cfg, sdir)
    out = sdir / "report"
    for f in ("report.md", "study.json", "study.png"):
        assert (out / f).stat().st_size > 0, f
    assert (docs / "study.png").read_bytes() == (out / "study.png").read_bytes()
    md = (docs / "study_results.md").read_text()
    lines = md.splitlines()
    i = next(k for k, line in enumerate(lines) if line.startswith("| arm | tokeniser"))
    header, main_table = lines[i], lines[i + 2:lines.index("", i)]      # the table at the budget
    assert [h.strip() for h in header.strip("|").split("|")] == [
        "arm", "tokeniser", "pretrained on", "s", "seeds", "test VRMSE @ 4 (mean ± std)", "min-max", "reduction vs scratch",
        "rollout VRMSE (all steps)", "wall s (stage 1 + 2)", "GFLOP (stage 1 + 2)"]
    rows = {r[0]: r for r in ([c.strip() for c in line.strip("|").split("|")] for line in main_table)}
    assert list(rows) == list(ARMS) and all(len(r) == len(rows["scratch"]) == 11 for r in rows.values())
    assert rows["scratch"][7] == "+0.0%" and rows["scratch"][2] == "-"
    assert rows["in_domain_frozen"][2] == EULER and rows["in_domain_finetune_s8"][3] == "8"
    assert all(r[4] == "2" for r in rows.values())
    assert "low @ 2" in md and "high @ 4" in md                 # band NMSE early (first eval) and late

    js = json.loads((out / "study.json").read_text())
    for arm in ARMS:
        e = js["arms"][arm]
        assert e["final"]["n"] == 2 and e["curve"]["steps"] == [2, 4]
        assert e["bands_early"]["step"] == 2 and e["bands_late"]["step"] == 4
        assert len(e["rollout"]["mean"]) == len(e["rollout"]["windows"]) >= 1
        assert e["dyn_flops"] > 0 and e["dyn_wall_s"] > 0
    assert js["arms"]["scratch"]["ae_flops"] == 0 and js["arms"]["in_domain_frozen"]["ae_flops"] > 0
    assert js["flops"]["dyn"]["in_domain_frozen"]["once"] > 0     # the latent cache's one-off encoding
    assert js["flops"]["dyn"]["scratch"]["once"] == 0
    # the frozen arm trains only the processor on latents: far fewer FLOPs per step than scratch
    assert js["flops"]["dyn"]["in_domain_frozen"]["step"] < js["flops"]["dyn"]["scratch"]["step"]
    red = res["arms"]["in_domain_frozen"]["reduction_pct"]
    s, f = js["arms"]["scratch"]["final"]["mean"], js["arms"]["in_domain_frozen"]["final"]["mean"]
    assert red == pytest.approx(100 * (s - f) / s)

    # resumability: a second call trains nothing and leaves every run's metrics untouched
    metrics = {p: p.read_text() for p in sdir.rglob("metrics.jsonl")}
    assert len(metrics) == 1 + len(ARMS) * 2
    capsys.readouterr()
    again = study.run_study(tiny_study_config(tiny_base, str(docs)), sdir)
    assert again["trained"] == [] and len(again["skipped"]) == len(done["trained"])
    assert "[ae] step" not in capsys.readouterr().out
    assert {p: p.read_text() for p in sdir.rglob("metrics.jsonl")} == metrics


def test_report_without_runs_says_what_to_do(tmp_path):
    cfg = tiny_study_config(str(tmp_path / "data"), "")
    with pytest.raises(FileNotFoundError, match="no finished stage-2 run"):
        study.report(cfg, tmp_path / "empty")
