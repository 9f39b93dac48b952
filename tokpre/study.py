"""The pretraining study (issue 7): runs every arm, then writes the report.

    python -m tokpre.study --config=configs/study.py --workdir=runs/study                 # run (resumable) + report
    python -m tokpre.study --config=configs/study.py --workdir=runs/study --report_only   # report only
    python -m tokpre.study --config=configs/study.py:paper --workdir=/path/to/study        # The Well, accelerators

Each run is a ``tokpre.main`` workdir under the study dir: ``ae/<pretrain>/`` (stage 1, one per entry of
``study.pretrain``) and ``dyn/<arm>/seed<k>/`` (stage 2). Runs go seed by seed (every arm for seed 0 first), so an
interrupted study already has complete seeds. Rerunning skips finished runs and resumes interrupted ones from
their last checkpoint (``tokpre.main.run``). Each run's wall time (compile, training, evaluation, rollout) is
appended to ``<run>/study_timing.json`` when the call completes (an interrupted call's time is not recorded; the
resumed call's is).

The report (``<study>/report/``: ``report.md``, ``study.json``, ``study.png``; the figure and the table are also
copied to ``study.docs_dir`` as ``study.png`` and ``study_results.md``):

- test-split one-step VRMSE against training step per arm (mean, min-max band over seeds);
- the table at the step budget: VRMSE mean, std, min-max, the reduction relative to ``study.baseline`` in %;
- rollout VRMSE per The Well time window (``<run>/dyn/rollout.json``, mean over fields and seeds);
- The Well's 3-band spectral NMSE (low/mid/high wavenumbers, the band-averaged NEPS) of the one-step error at the
  first and the last evaluation (``eval/nmse_band{0,1,2}`` logged by ``dyn.one_step_eval``);
- cost per arm: stage-1 + stage-2 wall time and FLOPs (XLA cost analysis of each compiled train step at the
  study's shapes, ``tokpre.train.cost``, times the number of steps; the frozen arm's latent-cache step plus the
  one-off encoding of the training windows). Evaluation and rollout FLOPs are not counted.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import ml_collections
import numpy as np

BANDS = ("low", "mid", "high")


# ------------------------------------------------------------------------------------------------ configs

def check_study_config(cfg) -> None:
    """Raises a ValueError naming the config key when the study block is missing or inconsistent."""
    if "study" not in cfg:
        raise ValueError("tokpre.study: the config has no `study` block; pass a study config, e.g. "
                         "--config=configs/study.py (or configs/study.py:paper)")
    st = cfg.study
    for arm in st.arm_order:
        if arm not in st.arms:
            raise ValueError(f"config key study.arm_order: arm {arm!r} is not in study.arms {sorted(st.arms)}")
        a = st.arms[arm]
        if a.mode not in ("scratch", "finetune", "frozen"):
            raise ValueError(f"config key study.arms.{arm}.mode: expected scratch|finetune|frozen, found {a.mode!r}")
        if a.mode != "scratch" and a.pretrain not in st.pretrain:
            raise ValueError(f"config key study.arms.{arm}.pretrain: {a.pretrain!r} is not in study.pretrain "
                             f"{sorted(st.pretrain)}")
    if st.baseline not in st.arm_order:
        raise ValueError(f"config key study.baseline: {st.baseline!r} is not in study.arm_order {list(st.arm_order)}")
    if not st.seeds:
        raise ValueError("config key study.seeds: expected at least one seed, found none")


def _plain(cfg) -> ml_collections.ConfigDict:
    """An unlocked deep copy of ``cfg`` without the ``study`` block (a plain tokpre.main config)."""
    d = cfg.to_dict()
    d.pop("study", None)
    return ml_collections.ConfigDict(d)


def pretrain_names(cfg) -> list[str]:
    """The pretraining runs some arm uses, in ``study.pretrain_order``."""
    used = {cfg.study.arms[a].pretrain for a in cfg.study.arm_order if cfg.study.arms[a].mode != "scratch"}
    return [p for p in cfg.study.pretrain_order if p in used]


def ae_workdir(study_dir: str | Path, name: str) -> Path:
    return Path(study_dir) / "ae" / name


def arm_workdir(study_dir: str | Path, arm: str, seed: int) -> Path:
    return Path(study_dir) / "dyn" / arm / f"seed{int(seed)}"


def ae_config(cfg, name: str) -> ml_collections.ConfigDict:
    """Stage-1 config of pretraining run ``name`` (``study.pretrain[name]`` datasets, seed ``cfg.seed``)."""
    c = _plain(cfg)
    c.stages = ("ae",)
    c.ae.datasets = tuple(cfg.study.pretrain[name])
    return c


def dyn_config(cfg, study_dir: str | Path, arm: str, seed: int) -> ml_collections.ConfigDict:
    """Stage-2 config of ``arm`` at ``seed``: tokeniser mode, compression and the AE checkpoint of its pretraining."""
    a = cfg.study.arms[arm]
    c = _plain(cfg)
    c.stages = ("dyn",)
    c.seed = int(seed)
    c.dyn.tokeniser = str(a.mode)
    c.dyn.compression = tuple(int(v) for v in a.compression)
    c.dyn.ae_checkpoint = (str((ae_workdir(study_dir, a.pretrain) / "ae" / "checkpoints").absolute())
                           if a.mode != "scratch" else "")
    return c


# ------------------------------------------------------------------------------------------------ running

def _finished(workdir: Path, stage: str, steps: int) -> bool:
    report = workdir / stage / ("reconstruction.json" if stage == "ae" else "rollout.json")
    if not report.exists():
        return False
    from tokpre.checkpoint import StageCheckpointer
    ckpt = StageCheckpointer(workdir / stage / "checkpoints")
    latest = ckpt.latest_step()
    ckpt.close()
    return latest is not None and latest >= steps


def _timed_run(c, workdir: Path, stage: str, log) -> float:
    from tokpre import main
    t0 = time.time()
    main.run(c, workdir)
    wall = time.time() - t0
    path = workdir / "study_timing.json"
    rec = json.loads(path.read_text()) if path.exists() else {"calls": []}
    rec["calls"].append({"stage": stage, "start": t0, "wall_s": wall})
    path.write_text(json.dumps(rec, indent=2))
    log(f"[study] {workdir} ({stage}) took {wall:.1f}s")
    return wall


def run_study(cfg, study_dir: str | Path, log=print) -> dict:
    """Runs every pretraining and every (seed, arm) that is not finished; returns ``{"trained": [...],
    "skipped": [...]}`` (workdirs)."""
    check_study_config(cfg)
    study_dir = Path(study_dir).absolute()
    study_dir.mkdir(parents=True, exist_ok=True)
    (study_dir / "study_config.json").write_text(cfg.to_json_best_effort(indent=2))
    if cfg.study.get("compilation_cache", False):
        import jax
        jax.config.update("jax_compilation_cache_dir", str(study_dir / "jax_cache"))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    out = {"trained": [], "skipped": []}
    jobs = [(ae_workdir(study_dir, p), "ae", ae_config(cfg, p)) for p in pretrain_names(cfg)]
    jobs += [(arm_workdir(study_dir, arm, seed), "dyn", dyn_config(cfg, study_dir, arm, seed))
             for seed in cfg.study.seeds for arm in cfg.study.arm_order]
    t0 = time.time()
    for i, (wd, stage, c) in enumerate(jobs):
        if _finished(wd, stage, int(c[stage].steps)):
            log(f"[study] {wd.relative_to(study_dir)} finished; skipping")
            out["skipped"].append(str(wd))
            continue
        log(f"[study] job {i + 1}/{len(jobs)}: {wd.relative_to(study_dir)} ({stage}); study elapsed "
            f"{time.time() - t0:.0f}s")
        _timed_run(c, wd, stage, log)
        out["trained"].append(str(wd))
    return out


# ------------------------------------------------------------------------------------------------ cost

def _dataset_shape(cfg, dataset: str) -> tuple[tuple[int, ...], int]:
    from tokpre.data import well
    sp = well.WellSplit(cfg.data.well_base_path, dataset, "train")
    return tuple(int(n) for n in sp.resolution), len(sp.field_names)


def _compiled_flops(fn, *args) -> float:
    import jax
    cost = jax.jit(fn).lower(*args).compile().cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0]
    return float(cost.get("flops", float("nan")))


def ae_step_flops(c) -> float:
    """Expected FLOPs of one stage-1 step: mean over ``ae.datasets`` (batches alternate) and the sampled
    compressions (weighted by ``ae.compression_weights``)."""
    from tokpre.train import ae, cost
    comps = ae.compressions_of(c)
    probs = ae.compression_probabilities(c, comps)
    vals = []
    for ds in c.ae.datasets:
        res, n_ch = _dataset_shape(c, ds)
        vals.append(sum(p * cost.step_flops(*cost.abstract_step(c, "ae", res, n_ch, compression=comp))
                        for comp, p in zip(comps, probs)))
    return float(np.mean(vals))


def dyn_flops(c) -> dict:
    """``{"step": FLOPs per stage-2 step, "once": one-off FLOPs}`` (the latent cache's encoding in frozen mode)."""
    import jax
    import jax.numpy as jnp

    from tokpre.data import well
    from tokpre.train import cost, dyn
    from tokpre.train.optim import make_optimizer
    from tokpre.train.state import make_train_step
    res, n_ch = _dataset_shape(c, str(c.dyn.dataset))
    bs = int(c.data.batch_size)
    if not (str(c.dyn.tokeniser) == "frozen" and bool(c.dyn.cache_latents)):
        return {"step": cost.step_flops(*cost.abstract_step(c, "dyn", res, n_ch)), "once": 0.0}
    model = dyn.emulator_from_config(c)
    comp = dyn.compression_of(c)
    t, s = comp
    n_in, lat = int(c.dyn.n_steps_input), int(c.model.tokeniser.latent_channels)
    tx, _ = make_optimizer(c.dyn.optimizer)
    state = cost._abstract_state(dyn.init_fn(model, c, comp), tx, ("processor",))
    n = tuple(r // s for r in res)
    batch = {"z_in": jax.ShapeDtypeStruct((bs, n_in // t, *n, lat), jnp.float32),   # (B, T', *n, L)
             "z_out": jax.ShapeDtypeStruct((bs, 1, *n, lat), jnp.float32)}          # (B, 1, *n, L)
    step = cost.step_flops(make_train_step(dyn.make_latent_loss(model), tx, ("processor",)), state, batch)
    periodic = (True,) * len(res)
    x = jax.ShapeDtypeStruct((bs, n_in + t, *res, n_ch), jnp.float32)               # (B, Ti + t, *N, C)
    ids = jax.ShapeDtypeStruct((n_ch,), jnp.int32)

    def encode(params, x, ids):
        return model.apply({"params": params}, x, ids, periodic=periodic, compression=comp, method="encode")

    per_batch = _compiled_flops(encode, state.params, x, ids)
    n_windows = well.WellSplit(c.data.well_base_path, str(c.dyn.dataset), "train").num_windows(n_in, t, 1)
    return {"step": step, "once": per_batch * n_windows / bs}


def study_flops(cfg, study_dir: Path, log=print) -> dict:
    """FLOPs per step of every pretraining and arm, cached in ``<study>/flops.json`` (keyed by the config)."""
    path = study_dir / "flops.json"
    key = _plain(cfg).to_json_best_effort(sort_keys=True) + json.dumps(cfg.study.to_dict(), sort_keys=True,
                                                                       default=str)
    if path.exists():
        cached = json.loads(path.read_text())
        if cached.get("key") == key:
            return cached["flops"]
    log("[study] FLOPs per step from XLA's cost analysis of each compiled step (abstract inputs)")
    out = {"ae": {}, "dyn": {}}
    for p in pretrain_names(cfg):
        c = ae_config(cfg, p)
        out["ae"][p] = {"step": ae_step_flops(c), "steps": int(c.ae.steps)}
    for arm in cfg.study.arm_order:
        c = dyn_config(cfg, study_dir, arm, cfg.study.seeds[0])
        out["dyn"][arm] = {**dyn_flops(c), "steps": int(c.dyn.steps)}
    path.write_text(json.dumps({"key": key, "flops": out}, indent=2))
    return out


# ------------------------------------------------------------------------------------------------ collecting

def _metrics(stage_dir: Path) -> list[dict]:
    p = stage_dir / "metrics.jsonl"
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()] if p.exists() else []


def _wall(workdir: Path, stage: str) -> float | None:
    """Runner-measured wall time of ``workdir`` (sum over calls), else the span of its metrics timestamps."""
    p = workdir / "study_timing.json"
    if p.exists():
        return float(sum(c["wall_s"] for c in json.loads(p.read_text())["calls"]))
    rows = _metrics(workdir / stage)
    return float(rows[-1]["time"] - rows[0]["time"]) if len(rows) > 1 else None


def _stats(values: list[float]) -> dict:
    v = np.asarray(values, np.float64)
    return {"mean": float(v.mean()), "std": float(v.std()), "min": float(v.min()), "max": float(v.max()),
            "n": int(v.size), "values": [float(x) for x in v]}


def collect(cfg, study_dir: str | Path) -> dict:
    """Everything the report shows, from the runs' files (finished seeds only)."""
    study_dir = Path(study_dir).absolute()
    res: dict[str, Any] = {"pretrain": {}, "arms": {}, "budget": int(cfg.dyn.steps)}
    for p in pretrain_names(cfg):
        wd = ae_workdir(study_dir, p)
        rec = wd / "ae" / "reconstruction.json"
        res["pretrain"][p] = {"datasets": list(cfg.study.pretrain[p]), "wall_s": _wall(wd, "ae"),
                              "steps": int(cfg.ae.steps),
                              "reconstruction": json.loads(rec.read_text()) if rec.exists() else None}
    for arm in cfg.study.arm_order:
        a = cfg.study.arms[arm]
        seeds = {}
        for seed in cfg.study.seeds:
            wd = arm_workdir(study_dir, arm, seed)
            roll = wd / "dyn" / "rollout.json"
            rows = [r for r in _metrics(wd / "dyn") if "eval/vrmse" in r]
            if not roll.exists() or not rows or rows[-1]["step"] < int(cfg.dyn.steps):
                continue
            by_step = {}
            for r in rows:                     # a resumed run may repeat a step: keep the last record
                by_step[int(r["step"])] = r
            steps = sorted(by_step)
            rj = json.loads(roll.read_text())
            seeds[int(seed)] = {
                "steps": steps, "vrmse": [by_step[s]["eval/vrmse"] for s in steps],
                "bands": [[by_step[s].get(f"eval/nmse_band{i}", float("nan")) for i in range(3)] for s in steps],
                "rollout_windows": [list(w) for w in rj["windows"]],
                "rollout_window_vrmse": [float(np.mean(w)) for w in rj["window_means"]],
                "rollout_all": float(np.mean(rj["all_mean"])),
                "wall_s": _wall(wd, "dyn")}
        entry: dict[str, Any] = {"mode": a.mode, "pretrain": a.pretrain, "compression": list(a.compression),
                                 "pretrain_datasets": list(cfg.study.pretrain[a.pretrain]) if a.pretrain else [],
                                 "seeds": seeds}
        if seeds:
            common = sorted(set.intersection(*(set(s["steps"]) for s in seeds.values())))
            curves = np.array([[s["vrmse"][s["steps"].index(k)] for k in common] for s in seeds.values()])
            bands = np.array([[s["bands"][s["steps"].index(k)] for k in common] for s in seeds.values()])
            entry["curve"] = {"steps": common, "mean": curves.mean(0).tolist(), "std": curves.std(0).tolist(),
                              "min": curves.min(0).tolist(), "max": curves.max(0).tolist()}
            entry["final"] = _stats(list(curves[:, -1]))
            entry["bands_early"] = {"step": common[0], **dict(zip(BANDS, np.nanmean(bands[:, 0], 0).tolist()))}
            entry["bands_late"] = {"step": common[-1], **dict(zip(BANDS, np.nanmean(bands[:, -1], 0).tolist()))}
            first = next(iter(seeds.values()))
            entry["rollout"] = {"windows": first["rollout_windows"],
                                "mean": np.mean([s["rollout_window_vrmse"] for s in seeds.values()], 0).tolist(),
                                "all": _stats([s["rollout_all"] for s in seeds.values()])}
            walls = [s["wall_s"] for s in seeds.values() if s["wall_s"] is not None]
            entry["dyn_wall_s"] = float(np.mean(walls)) if walls else None
        res["arms"][arm] = entry
    base = res["arms"].get(cfg.study.baseline, {}).get("final")
    for arm, e in res["arms"].items():
        if base and "final" in e:
            e["reduction_pct"] = 100.0 * (base["mean"] - e["final"]["mean"]) / base["mean"]
    return res


def add_cost(res: dict, flops: dict) -> dict:
    """Adds per-arm stage-1 + stage-2 wall time (mean per seed) and FLOPs (per seed) to ``res['arms']``."""
    for arm, e in res["arms"].items():
        p = e["pretrain"]
        f = flops["dyn"].get(arm)
        e["dyn_flops"] = f["step"] * f["steps"] + f["once"] if f else None
        if p:
            fa = flops["ae"].get(p)
            e["ae_flops"] = fa["step"] * fa["steps"] if fa else None
            e["ae_wall_s"] = res["pretrain"].get(p, {}).get("wall_s")
        else:
            e["ae_flops"], e["ae_wall_s"] = 0.0, 0.0
        e["total_flops"] = (e["ae_flops"] + e["dyn_flops"]) if e["ae_flops"] is not None and e["dyn_flops"] else None
        w = e.get("dyn_wall_s")
        e["total_wall_s"] = (e["ae_wall_s"] + w) if (w is not None and e["ae_wall_s"] is not None) else None
    res["flops"] = flops
    return res


# ------------------------------------------------------------------------------------------------ report

def _f(v, fmt=".4f") -> str:
    return "n/a" if v is None or (isinstance(v, float) and not np.isfinite(v)) else format(v, fmt)


def _label(arm: str, e: dict) -> str:
    return f"{arm} (s={e['compression'][1]})"


def tables(res: dict) -> dict[str, str]:
    """Markdown tables: ``main`` (VRMSE at the budget, reduction, cost), ``rollout``, ``bands``, ``pretrain``."""
    arms = {a: e for a, e in res["arms"].items() if "final" in e}
    main = [f"| arm | tokeniser | pretrained on | s | seeds | test VRMSE @ {res['budget']} (mean ± std) | min-max | "
            "reduction vs scratch | rollout VRMSE (all steps) | wall s (stage 1 + 2) | GFLOP (stage 1 + 2) |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for a, e in arms.items():
        fin = e["final"]
        red = e.get("reduction_pct")
        main.append(
            f"| {a} | {e['mode']} | {' + '.join(e['pretrain_datasets']) or '-'} | {e['compression'][1]} | "
            f"{fin['n']} | {fin['mean']:.4f} ± {fin['std']:.4f} | {fin['min']:.4f}-{fin['max']:.4f} | "
            f"{'n/a' if red is None else f'{red:+.1f}%'} | {e['rollout']['all']['mean']:.4f} | "
            f"{_f(e.get('ae_wall_s'), '.0f')} + {_f(e.get('dyn_wall_s'), '.0f')} | "
            f"{_f(None if e.get('ae_flops') is None else e['ae_flops'] / 1e9, '.0f')} + "
            f"{_f(None if e.get('dyn_flops') is None else e['dyn_flops'] / 1e9, '.0f')} |")
    first = next(iter(arms.values()), None)
    roll = []
    if first:
        wins = [f"{w[0]}:{w[1]}" for w in first["rollout"]["windows"]]
        roll = ["| arm | " + " | ".join(wins) + " |", "|---|" + "---|" * len(wins)]
        for a, e in arms.items():
            roll.append(f"| {a} | " + " | ".join(f"{v:.4f}" for v in e["rollout"]["mean"]) + " |")
    bands = []
    if first:
        s0, s1 = first["bands_early"]["step"], first["bands_late"]["step"]
        bands = [f"| arm | low @ {s0} | mid @ {s0} | high @ {s0} | low @ {s1} | mid @ {s1} | high @ {s1} |",
                 "|---|---|---|---|---|---|---|"]
        for a, e in arms.items():
            bands.append(f"| {a} | " + " | ".join(_f(e[k][b]) for k in ("bands_early", "bands_late")
                                                  for b in BANDS) + " |")
    pre = ["| pretraining | datasets | steps | wall s | reconstruction VRMSE (test, per dataset, t,s) |",
           "|---|---|---|---|---|"]
    for p, e in res["pretrain"].items():
        rec = e.get("reconstruction") or {}
        rtxt = "; ".join(f"{ds} " + ", ".join(f"({k}) {v['mean']:.4f}" for k, v in r.items())
                         for ds, r in rec.items())
        pre.append(f"| {p} | {' + '.join(e['datasets'])} | {e['steps']} | {_f(e['wall_s'], '.0f')} | {rtxt or 'n/a'} |")
    return {"main": "\n".join(main), "rollout": "\n".join(roll), "bands": "\n".join(bands), "pretrain": "\n".join(pre)}


def targets(cfg, res: dict) -> list[str]:
    """The issue's checks, as measured (no pass/fail is forced)."""
    arms = res["arms"]
    out = []
    ind, ood, scr = (arms.get(k, {}).get("final") for k in ("in_domain_finetune", "out_of_domain_finetune",
                                                                   cfg.study.baseline))
    if ind and scr:
        red = arms["in_domain_finetune"]["reduction_pct"]
        out.append(f"in-domain finetune reduction vs scratch at step {res['budget']}: {red:.1f}% "
                   f"(target >= 40%: {'met' if red >= 40 else 'missed'})")
    if ind and ood and scr:
        ok = ind["mean"] < ood["mean"] < scr["mean"]
        out.append(f"order in-domain {ind['mean']:.4f} < out-of-domain {ood['mean']:.4f} < scratch "
                   f"{scr['mean']:.4f}: {'met' if ok else 'missed'}")
    walls = [e["wall_s"] for e in res["pretrain"].values() if e["wall_s"] is not None]
    walls += [s["wall_s"] for e in arms.values() for s in e["seeds"].values() if s["wall_s"] is not None]
    total = float(sum(walls))
    res["study_wall_s"] = total
    out.append(f"study wall time (sum of every run's wall time): {total / 60:.1f} min")
    return out


def plot(res: dict, path: Path) -> None:
    """2x2 figure: VRMSE vs step (mean, min-max band), rollout VRMSE per window, band NMSE early/late, cost."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    arms = {a: e for a, e in res["arms"].items() if "final" in e}
    colors = {a: plt.cm.tab10(i % 10) for i, a in enumerate(arms)}
    fig, ax = plt.subplots(2, 2, figsize=(13, 9))
    a0 = ax[0, 0]
    for a, e in arms.items():
        c = e["curve"]
        a0.plot(c["steps"], c["mean"], color=colors[a], label=f"{_label(a, e)} (n={e['final']['n']})")
        a0.fill_between(c["steps"], c["min"], c["max"], color=colors[a], alpha=0.2)
    a0.set(xlabel="stage-2 training step", ylabel="test one-step VRMSE", yscale="log",
           title="Test VRMSE vs step (mean, min-max over seeds)")
    a0.legend(fontsize=7)
    a1 = ax[0, 1]
    for a, e in arms.items():
        wins = [f"{w[0]}:{w[1]}" for w in e["rollout"]["windows"]]
        a1.plot(range(len(wins)), e["rollout"]["mean"], "o-", color=colors[a], label=a)
        a1.set_xticks(range(len(wins)), wins)
    a1.set(xlabel="rollout window (predicted steps)", ylabel="rollout VRMSE (mean over seeds)", yscale="log",
           title="Autoregressive rollout on the test split")
    a2 = ax[1, 0]
    w = 0.8 / max(len(arms), 1)
    for i, (a, e) in enumerate(arms.items()):
        vals = [e["bands_early"][b] for b in BANDS] + [e["bands_late"][b] for b in BANDS]
        a2.bar(np.arange(6) + i * w, vals, w, color=colors[a], label=a)
    if arms:
        e = next(iter(arms.values()))
        a2.set_xticks(np.arange(6) + 0.4 - w / 2,
                      [f"{b}\n@{e['bands_early']['step']}" for b in BANDS]
                      + [f"{b}\n@{e['bands_late']['step']}" for b in BANDS])
    a2.set(ylabel="spectral NMSE (error / target energy)", yscale="log",
           title="One-step error per wavenumber band, early and late")
    a2.legend(fontsize=7)
    a3 = ax[1, 1]
    for a, e in arms.items():
        if e.get("total_flops"):
            a3.errorbar(e["total_flops"] / 1e12, e["final"]["mean"], yerr=e["final"]["std"], fmt="o",
                        color=colors[a], label=a)
            a3.annotate(f"{_f(e.get('total_wall_s'), '.0f')}s", (e["total_flops"] / 1e12, e["final"]["mean"]),
                        fontsize=7, xytext=(4, 4), textcoords="offset points")
    a3.set(xlabel="TFLOP per seed (stage 1 + stage 2)", ylabel=f"test VRMSE @ {res['budget']}",
           title="Cost vs result (labels: wall s, stage 1 + 2)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(cfg, study_dir: str | Path, log=print) -> dict:
    """Writes ``<study>/report/{report.md, study.json, study.png}`` and copies the figure and the table to
    ``study.docs_dir`` (``study.png``, ``study_results.md``). Returns the collected results."""
    check_study_config(cfg)
    study_dir = Path(study_dir).absolute()
    res = collect(cfg, study_dir)
    if not any("final" in e for e in res["arms"].values()):
        raise FileNotFoundError(f"tokpre.study: no finished stage-2 run under {study_dir / 'dyn'}; run the study "
                                "first (without --report_only)")
    res = add_cost(res, study_flops(cfg, study_dir, log))
    checks = targets(cfg, res)
    t = tables(res)
    out = study_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    plot(res, out / "study.png")
    seeds = sorted({s for e in res["arms"].values() for s in e["seeds"]})
    body = "\n".join([
        f"Stage 2 on `{cfg.dyn.dataset}` ({res['budget']} steps, batch {cfg.data.batch_size}, seeds {seeds}); "
        "test VRMSE is the one-step VRMSE on the test split in physical units; the reduction is relative to the "
        f"`{cfg.study.baseline}` mean. Wall time per seed on the machine that ran the study; FLOPs from XLA's cost "
        "analysis of the compiled train steps (evaluation and rollout not counted).", "",
        t["main"], "",
        "Rollout VRMSE per time window (predicted steps, mean over fields and seeds):", "", t["rollout"], "",
        "One-step spectral NMSE per wavenumber band (The Well's binned_spectral_mse; mean over seeds), early and "
        "late in training:", "", t["bands"], "",
        "Tokeniser pretraining (stage 1, one run each):", "", t["pretrain"], "",
        *[f"- {c}" for c in checks]])
    (out / "report.md").write_text("# Tokeniser pretraining study\n\n![study](study.png)\n\n" + body + "\n")
    (out / "study.json").write_text(json.dumps(res, indent=2, default=float))
    docs = Path(str(cfg.study.docs_dir))
    if str(cfg.study.docs_dir):
        docs.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(out / "study.png", docs / "study.png")
        (docs / "study_results.md").write_text("![study](study.png)\n\n" + body + "\n")
    log(body)
    log(f"[study] report in {out}")
    return res


# ------------------------------------------------------------------------------------------------ CLI

def main(argv) -> None:
    from absl import app, logging

    from tokpre import main as tmain
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    logging.set_verbosity(logging.WARNING)
    cfg, workdir = tmain._CONFIG.value, tmain._WORKDIR.value
    check_study_config(cfg)
    if not _REPORT_ONLY.value:
        run_study(cfg, workdir)
    report(cfg, workdir)


if __name__ == "__main__":
    from absl import app, flags

    import tokpre.main  # noqa: F401  (defines --config and --workdir, shared with tokpre.main)
    _REPORT_ONLY = flags.DEFINE_bool("report_only", False, "Only write the report from existing runs.")
    flags.FLAGS.set_default("config", "configs/study.py")
    flags.FLAGS.set_default("workdir", "runs/study")
    app.run(main)
