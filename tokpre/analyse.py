"""Analyse trained runs: restore their checkpoints, evaluate on the test split, write plots and a report.

    python -m tokpre.analyse --workdir=runs/finetune --workdir=runs/scratch --out=runs/compare
    python -m tokpre.analyse --workdir=runs/quickstart --stage=all --snapshot_steps=1,10,50

Each ``--workdir`` needs only what ``tokpre.main`` wrote there (``config.json``, checkpoints, metrics) plus the
dataset under ``config.data.well_base_path`` (or ``--well_base_path``). ``--stage`` picks what to analyse per
workdir: ``auto`` (dyn if it has a checkpoint, else ae), ``ae``, ``dyn`` or ``all`` (every stage present).

- dyn runs: autoregressive rollout of the test trajectories (``--trajectories``, ``--max_steps``) and the
  teacher-forced one-step prediction at the same frames; The Well's metrics per predicted step in physical units,
  reduced over its log-spaced time windows; NEPS (error power / target power per isotropic wavenumber shell).
- ae runs: reconstruction VRMSE per compression ratio (``tokpre.train.ae.evaluate_reconstruction``) and NEPS of the
  reconstructions.

The report goes to ``<first workdir>/report/`` (or ``--out``): ``metrics.json``, ``report.md`` and PNG plots
(rollout VRMSE per step, NEPS per wavenumber, training curves, truth / prediction / error snapshots).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from tokpre.checkpoint import RUN_STAGES, Run, load_run
from tokpre.data import pipeline, well
from tokpre.data.fields import FieldVocab
from tokpre.eval import metrics, rollout
from tokpre.train import ae, common, dyn, loop

BANDS = ("low", "mid", "high")


@dataclasses.dataclass(frozen=True)
class Options:
    """What to evaluate. 0 means 'all' for ``trajectories`` and ``eval_batches``, 'the config's' for ``max_steps``
    (``dyn.rollout_max_steps``) and ``batch_size`` (``data.batch_size``)."""

    split: str = "test"
    trajectories: int = 0
    max_steps: int = 0
    batch_size: int = 0
    eval_batches: int = 0
    compressions: str = "trained"          # 'trained' | 'all' | 't,s;t,s'
    snapshot_steps: tuple[int, ...] = (1, 10, 50, 100)
    snapshot_fields: tuple[str, ...] = ()   # empty: every field
    well_base_path: str = ""


# ------------------------------------------------------------------------------------------------ helpers

def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.ndarray, jax.Array)):
        return _jsonable(np.asarray(x).tolist())
    if isinstance(x, (np.floating, float)):
        return float(x) if np.isfinite(x) else None        # JSON has no NaN
    if isinstance(x, np.integer):
        return int(x)
    return x


def _band_dict(bands_3c: np.ndarray, names: Sequence[str]) -> dict:
    """(3, C) band values -> {"mean": {low, mid, high}, "fields": {name: {low, mid, high}}}."""
    b = np.asarray(bands_3c, np.float64)
    return {"mean": dict(zip(BANDS, np.nanmean(b, axis=1) if b.size else [np.nan] * 3)),
            "fields": {n: dict(zip(BANDS, b[:, c])) for c, n in enumerate(names)}}


def _neps_summary(err_sum: np.ndarray, tgt_sum: np.ndarray, neps_sum: np.ndarray, count: int, centres: np.ndarray,
                  spatial_shape: Sequence[int], names: Sequence[str]) -> dict:
    """NEPS per shell (mean over samples and frames of the per-frame ratio) and its energy-weighted Well bands.

    err_sum, tgt_sum, neps_sum: (K, C) sums over ``count`` frames of the error power, target power and NEPS.
    """
    curve = neps_sum / count                                          # (K, C)
    tgt = tgt_sum / count
    bands = np.asarray(metrics.neps_to_well_bands(jnp.asarray(curve), centres, spatial_shape,
                                                  target_power=jnp.asarray(tgt)))   # (3, C)
    return {"wavenumber": centres, "per_field": curve, "mean": curve.mean(axis=1), "bands": _band_dict(bands, names),
            "error_power": err_sum / count, "target_power": tgt}


def _windows_of(n: int) -> list[tuple[int, int]]:
    return [w for w in metrics.well_time_windows(n) if w[0] < w[1]]


def _reduce_suite(suite: dict[str, np.ndarray], names: Sequence[str], windows) -> dict:
    """The Well's suite ``{metric: (B, T, C)}`` -> VRMSE per step / window and every metric's summary keys."""
    v_tc = metrics.reduce_batch(suite["VRMSE"])                       # (T, C)
    return {"field_names": list(names), "windows": windows, "vrmse": v_tc,
            "window_means": np.stack([v_tc[a:b].mean(axis=0) for a, b in windows]),
            "all_mean": v_tc.mean(axis=0), "summary": metrics.summarise(suite, names, windows)}


@functools.lru_cache(maxsize=16)
def _normaliser(base: str, dataset: str, log_fields: tuple[str, ...]) -> pipeline.Normaliser:
    """One Normaliser object per dataset, so the jitted functions keyed on it compile once for several runs."""
    return pipeline.get_normaliser(base, dataset, log_fields)


# ------------------------------------------------------------------------------------------------ dyn runs

@functools.lru_cache(maxsize=16)
def _one_step_fn(step_fn, n_in: int, t: int, n_calls: int):
    """Teacher-forced prediction of frames ``n_in + k t .. n_in + (k+1) t`` from the true window before them."""
    @jax.jit
    def f(params, x):                                                 # x: (B, n_in + n_calls t, *N, C) normalised
        def one(k):
            return step_fn(params, jax.lax.dynamic_slice_in_dim(x, k * t, n_in, axis=1))   # (B, t, *N, C)
        y = jax.lax.map(one, jnp.arange(n_calls))                     # (n_calls, B, t, *N, C)
        y = jnp.moveaxis(y, 0, 1)
        return y.reshape((y.shape[0], n_calls * t) + y.shape[3:])
    return f


@functools.lru_cache(maxsize=16)
def _spectra_fn(norm, names: tuple[str, ...]):
    @jax.jit
    def f(pred, truth):                                               # normalised (B, T, *N, C)
        p, y = norm.denormalise(pred), norm.denormalise(truth)
        suite = metrics.evaluate_all(p, y, names)                     # The Well's suite: {metric: (B, T, C)}
        nep, _ = metrics.neps(p, y)                                   # (B, T, K, C)
        err, _ = metrics.shell_power(p - y)
        tgt, _ = metrics.shell_power(y)
        return p, y, suite, nep.sum(0), err.sum(0), tgt.sum(0)        # sums over the batch: (T, K, C)
    return f


def analyse_dyn(run: Run, opts: Options) -> tuple[dict, dict]:
    """Rollout and one-step evaluation of a dyn run on ``opts.split``. Returns (results, arrays for plots)."""
    cfg = run.config
    base = str(cfg.data.well_base_path)
    sp = well.WellSplit(base, run.dataset, opts.split)
    norm = _normaliser(base, run.dataset, tuple(cfg.data.log_fields))
    names = list(sp.field_names)
    trajs = sp.trajectories()
    if opts.trajectories > 0:
        trajs = trajs[: opts.trajectories]
    n_in, t = int(cfg.dyn.n_steps_input), run.compression[0]
    t_min = min(n for _, _, n in trajs)
    n_pred = min(opts.max_steps or int(cfg.dyn.rollout_max_steps), t_min - n_in)
    n_pred -= n_pred % t
    if n_pred < 1:
        raise ValueError(f"{run.dataset}/{opts.split}: trajectories of {t_min} frames leave no step to predict after "
                         f"dyn.n_steps_input={n_in} input frames (frames per step {t})")
    n_calls = n_pred // t
    ids = tuple(int(i) for i in run.field_ids)
    step = dyn.emulator_step_fn(run.model, common.periodic_of(sp.boundary), run.compression, ids)
    one_step = _one_step_fn(step, n_in, t, n_calls)
    spectra = _spectra_fn(norm, tuple(names))
    bs = opts.batch_size or int(cfg.data.batch_size)

    suites: dict[str, list] = {"rollout": [], "one_step": []}
    acc = {k: None for k in ("rollout", "one_step")}
    snap = None
    for start in range(0, len(trajs), bs):
        chunk = trajs[start:start + bs]
        data = np.stack([sp.read_trajectory(f, j)[: n_in + n_pred] for f, j, _ in chunk])   # (b, T, *N, C)
        x = jnp.asarray(norm.normalise(data), jnp.float32)
        truth = x[:, n_in:]
        preds = {"rollout": rollout.rollout(step, run.params, x[:, :n_in], n_calls, frames_per_step=t),
                 "one_step": one_step(run.params, x)}
        for kind, pred in preds.items():
            p_phys, y_phys, suite, nep, err, tgt = spectra(pred, truth)
            suites[kind].append(jax.device_get(suite))
            sums = [np.asarray(a, np.float64) for a in (nep, err, tgt)]
            acc[kind] = sums if acc[kind] is None else [a + b for a, b in zip(acc[kind], sums)]
            if kind == "rollout" and snap is None:                    # trajectory 0 for the snapshots
                snap = {"truth": np.asarray(y_phys[0]), "pred": np.asarray(p_phys[0])}
    windows = _windows_of(n_pred)
    spatial = tuple(sp.resolution)
    centres = 0.5 * (metrics.default_shell_edges(spatial)[:-1] + metrics.default_shell_edges(spatial)[1:])
    res: dict[str, Any] = {"n_trajectories": len(trajs), "n_steps": n_pred, "frames_per_step": t}
    for kind in ("rollout", "one_step"):
        suite = {k: np.concatenate([s[k] for s in suites[kind]]) for k in suites[kind][0]}
        res[kind] = _reduce_suite(suite, names, windows)
        nep_t, err_t, tgt_t = acc[kind]                               # (T, K, C) sums over trajectories
        n = len(trajs) * n_pred
        res[kind]["neps"] = _neps_summary(err_t.sum(0), tgt_t.sum(0), nep_t.sum(0), n, centres, spatial, names)
        res[kind]["neps"]["windows"] = {f"{a}:{b}": (nep_t[a:b].sum(0) / (len(trajs) * (b - a))).mean(axis=1)
                                        for a, b in windows}
    return res, {"snapshots": snap}


# ------------------------------------------------------------------------------------------------ ae runs

@functools.lru_cache(maxsize=64)
def _recon_spectra_fn(model, periodic, comp, norm):
    @jax.jit
    def f(params, x, ids):                                            # x: (B, T, *N, C) normalised
        recon = model.apply({"params": params}, x, ids, periodic=periodic, compression=comp)
        p, y = norm.denormalise(recon), norm.denormalise(x)
        nep, _ = metrics.neps(p, y)                                   # (B, T, K, C)
        err, _ = metrics.shell_power(p - y)
        tgt, _ = metrics.shell_power(y)
        return p[0, -1], y[0, -1], nep.sum((0, 1)), err.sum((0, 1)), tgt.sum((0, 1))
    return f


def _ae_compressions(run: Run, spec: str) -> list[tuple[int, int]]:
    if spec == "trained":
        return list(run.compressions)
    if spec == "all":
        nf = int(run.config.ae.n_frames)
        return [c for c in common.all_compressions(run.config) if nf % c[0] == 0]
    try:
        comps = [tuple(int(v) for v in part.split(",")) for part in spec.split(";") if part.strip()]
    except ValueError:
        comps = []
    allowed = common.all_compressions(run.config)
    if not comps or any(len(c) != 2 or c not in allowed for c in comps):
        raise ValueError(f"--compressions: expected 'trained', 'all' or pairs 't,s;t,s' out of {allowed}, "
                         f"found {spec!r}")
    return comps


def analyse_ae(run: Run, opts: Options) -> tuple[dict, dict]:
    """Reconstruction VRMSE (physical units) and NEPS per compression on ``opts.split``."""
    cfg = run.config.copy_and_resolve_references()
    base = str(cfg.data.well_base_path)
    comps = _ae_compressions(run, opts.compressions)
    if opts.batch_size:
        cfg.data.batch_size = int(opts.batch_size)
    vr = ae.evaluate_reconstruction(run.model, run.params, cfg, run.mesh, run.dataset, split=opts.split,
                                    max_batches=opts.eval_batches, compressions=comps)
    nf = int(cfg.ae.n_frames)
    sp = well.WellSplit(base, run.dataset, opts.split)
    names = list(sp.field_names)
    spatial = tuple(sp.resolution)
    norm = _normaliser(base, run.dataset, tuple(cfg.data.log_fields))
    bs = int(cfg.data.batch_size)
    n_batches = common.eval_batch_count(sp.num_windows(nf, 0, 1), bs, opts.eval_batches)
    batches = pipeline.make_eval_batches(base, run.dataset, split=opts.split, n_steps_input=nf, n_steps_output=0,
                                         batch_size=bs, max_batches=n_batches, log_fields=tuple(cfg.data.log_fields),
                                         vocab_size=int(cfg.model.tokeniser.vocab_size))
    edges = metrics.default_shell_edges(spatial)
    centres = 0.5 * (edges[:-1] + edges[1:])
    snaps = {}
    for comp in comps:
        key = f"{comp[0]},{comp[1]}"
        sums, count = None, 0
        for b in batches:
            f = _recon_spectra_fn(run.model, common.periodic_of(b["boundary"]), comp, norm)
            recon0, truth0, *s = f(run.params, jnp.asarray(b["input_fields"]), jnp.asarray(b["field_ids"]))
            s = [np.asarray(a, np.float64) for a in s]
            sums = s if sums is None else [a + c for a, c in zip(sums, s)]
            count += b["input_fields"].shape[0] * nf
            if key not in snaps:
                snaps[key] = {"truth": np.asarray(truth0), "pred": np.asarray(recon0)}
        nep, err, tgt = sums
        vr[key]["neps"] = _neps_summary(err, tgt, nep, count, centres, spatial, names)
    return {"reconstruction": vr, "field_names": names}, {"snapshots": snaps}


# ------------------------------------------------------------------------------------------------ plots

def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _log_axes(ax, x: bool = False) -> None:
    """Log y (and x) with plain '%.3g' tick labels: the short ranges here would otherwise read '1.1x10^0'."""
    from matplotlib.ticker import FormatStrFormatter
    for axis, on in ((ax.yaxis, True), (ax.xaxis, x)):
        if on:
            (ax.set_yscale if axis is ax.yaxis else ax.set_xscale)("log")
            axis.set_major_formatter(FormatStrFormatter("%.3g"))
            axis.set_minor_formatter(FormatStrFormatter("%.3g"))
            axis.set_tick_params(which="minor", labelsize=6)


def _safe(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", label).strip("_") or "run"


def plot_rollout(runs: list[dict], path: Path) -> None:
    """VRMSE per rollout step (log y), mean over fields and per field; rollout solid, one-step dashed."""
    plt = _plt()
    names = runs[0]["result"]["rollout"]["field_names"]
    panels = ["mean over fields"] + names
    ncol = min(3, len(panels))
    nrow = -(-len(panels) // ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.2 * ncol, 3.2 * nrow), squeeze=False)
    for i, r in enumerate(runs):
        colour = f"C{i % 10}"
        for kind, style in (("rollout", "-"), ("one_step", "--")):
            v = np.asarray(r["result"][kind]["vrmse"])               # (T, C)
            steps = np.arange(1, v.shape[0] + 1)
            for j, ax in enumerate(axes.flat[: len(panels)]):
                y = v.mean(axis=1) if j == 0 else v[:, j - 1]
                ax.plot(steps, y, style, color=colour, marker="o" if len(steps) < 12 else None, ms=3,
                        label=f"{r['label']} ({'rollout' if kind == 'rollout' else 'one-step'})")
    for j, ax in enumerate(axes.flat):
        if j >= len(panels):
            ax.axis("off")
            continue
        _log_axes(ax)
        ax.set_title(panels[j])
        ax.set_xlabel("rollout step")
        ax.set_ylabel("VRMSE")
        ax.grid(True, which="both", alpha=0.3)
    axes.flat[0].legend(fontsize=7)
    _save(fig, path, "VRMSE against rollout step (physical units)")


def _band_lines(ax, spatial: Sequence[int]) -> None:
    """The Well's band edges (rad/pixel) drawn in index units, as in ``neps_to_well_bands``."""
    for e in metrics.well_spectral_band_edges(spatial)[1:-1]:
        ax.axvline(float(e) * max(spatial) / (2 * np.pi), color="grey", ls=":", lw=1)


def _neps_axes(ax, spatial: Sequence[int]) -> None:
    _band_lines(ax, spatial)
    _log_axes(ax, x=True)
    ax.set_xlabel("wavenumber |k| (cycles per domain)")
    ax.grid(True, which="both", alpha=0.3)


def _save(fig, path: Path, title: str) -> None:
    plt = _plt()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_neps_dyn(runs: list[dict], path: Path) -> None:
    """Rollout NEPS (mean over fields) against wavenumber, one panel per Well time window, runs overlaid."""
    plt = _plt()
    windows = list(runs[0]["result"]["rollout"]["neps"]["windows"])
    panels = ["all steps"] + windows
    fig, axes = plt.subplots(1, len(panels), figsize=(3.8 * len(panels), 3.4), squeeze=False)
    for i, r in enumerate(runs):
        n = r["result"]["rollout"]["neps"]
        k = np.asarray(n["wavenumber"])
        sel = k > 0
        for ax, w in zip(axes.flat, panels):
            y = np.asarray(n["mean"] if w == "all steps" else n["windows"].get(w, np.full(len(k), np.nan)))
            ax.plot(k[sel], y[sel], color=f"C{i % 10}", marker=".", label=r["label"])
    for ax, w in zip(axes.flat, panels):
        _neps_axes(ax, runs[0]["spatial"])
        a, _, b = w.partition(":")                                   # window a:b (0-based) = steps a+1..b
        ax.set_title(w if not b else f"rollout step {b}" if int(a) + 1 == int(b) else f"rollout steps {int(a) + 1}-{b}")
    axes.flat[0].set_ylabel("NEPS (error / target power)")
    axes.flat[0].legend(fontsize=7)
    _save(fig, path, "Normalised error power spectrum of the rollout (dotted: The Well's low / mid / high bands)")


def plot_neps_ae(runs: list[dict], path: Path) -> None:
    """Reconstruction NEPS (mean over fields) against wavenumber: a panel per AE run, a line per compression."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(runs), figsize=(4.4 * len(runs), 3.4), squeeze=False)
    for ax, r in zip(axes.flat, runs):
        for j, (key, rec) in enumerate(r["result"]["reconstruction"].items()):
            k = np.asarray(rec["neps"]["wavenumber"])
            sel = k > 0
            ax.plot(k[sel], np.asarray(rec["neps"]["mean"])[sel], color=f"C{j % 10}", marker=".",
                    label=f"t={rec['t']}, s={rec['s']} (ratio {rec['ratio']:.0f})")
        _neps_axes(ax, r["spatial"])
        ax.set_ylabel("NEPS")
        ax.set_title(r["label"])
        ax.legend(fontsize=7)
    _save(fig, path, "Reconstruction NEPS per compression")


def plot_training(runs: list[dict], path: Path) -> None:
    """Train loss and eval VRMSE (from ``metrics.jsonl``) against step, runs overlaid."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), squeeze=False)
    for i, r in enumerate(runs):
        for ax, key in zip(axes.flat, ("train/loss", "eval/vrmse")):
            pts = [(m["step"], m[key]) for m in r["history"] if key in m]
            if pts:
                s, v = zip(*pts)
                ax.plot(s, v, color=f"C{i % 10}", marker="o" if len(s) < 12 else None, ms=3, label=r["label"])
    for ax, title in zip(axes.flat, ("train loss", "eval VRMSE (one step)")):
        _log_axes(ax)
        ax.set_xlabel("step")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        if ax.get_lines():
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, "not logged (dyn.eval_every = 0)" if "eval" in title else "no metrics",
                    ha="center", va="center", transform=ax.transAxes)
    _save(fig, path, "Training curves (metrics.jsonl)")


def _snapshot_grid(plt, path: Path, title: str, cols: list[str], truth: list, pred: list) -> None:
    """Rows truth / prediction / error; a column per entry of ``cols``. truth, pred: lists of (*N,) fields."""
    fig, axes = plt.subplots(3, len(cols), figsize=(2.6 * len(cols) + 0.8, 7.2), squeeze=False)
    lo = min(float(np.min(a)) for a in truth + pred)
    hi = max(float(np.max(a)) for a in truth + pred)
    err = [p - t for t, p in zip(truth, pred)]
    emax = max(float(np.max(np.abs(e))) for e in err) or 1.0
    for j, col in enumerate(cols):
        for row, (img, kw) in enumerate(((truth[j], dict(vmin=lo, vmax=hi, cmap="viridis")),
                                         (pred[j], dict(vmin=lo, vmax=hi, cmap="viridis")),
                                         (err[j], dict(vmin=-emax, vmax=emax, cmap="RdBu_r")))):
            ax = axes[row, j]
            im = ax.imshow(np.asarray(img).T, origin="lower", **kw)   # x along the horizontal axis
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(col, fontsize=9)
            if j == 0:
                ax.set_ylabel(("truth", "prediction", "error")[row])
            if j == len(cols) - 1:
                fig.colorbar(im, ax=axes[row, :].tolist(), shrink=0.85)
    fig.suptitle(title)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_snapshots(r: dict, out: Path, steps: Sequence[int], fields: Sequence[str] = ()) -> list[Path]:
    """Truth / prediction / error images per field (all, or ``fields``): rollout steps (dyn) or compressions (ae).
    2D data only."""
    plt = _plt()
    snaps = r["arrays"]["snapshots"]
    names = r["field_names"]
    unknown = sorted(set(fields) - set(names))
    if unknown:
        raise ValueError(f"--snapshot_fields: {unknown} are not fields of {r['dataset']} (fields: {names})")
    if not snaps or len(r["spatial"]) != 2:
        return []
    chosen_fields = [(c, n) for c, n in enumerate(names) if not fields or n in fields]
    files = []
    if r["stage"] == "dyn":
        n = snaps["truth"].shape[0]
        chosen = sorted({s for s in steps if 1 <= s <= n}) or [1, n]
        for c, name in chosen_fields:
            p = out / f"snapshots_{_safe(r['label'])}_{_safe(name)}.png"
            _snapshot_grid(plt, p, f"{r['label']}: {name}, trajectory 0 of the {r['split']} split",
                           [f"step {s}" for s in chosen], [snaps["truth"][s - 1, ..., c] for s in chosen],
                           [snaps["pred"][s - 1, ..., c] for s in chosen])
            files.append(p)
    else:
        for c, name in chosen_fields:
            p = out / f"snapshots_{_safe(r['label'])}_{_safe(name)}.png"
            keys = list(snaps)
            _snapshot_grid(plt, p, f"{r['label']}: {name}, reconstruction of the first {r['split']} window",
                           [f"t,s = {k}" for k in keys], [snaps[k]["truth"][..., c] for k in keys],
                           [snaps[k]["pred"][..., c] for k in keys])
            files.append(p)
    return files


# ------------------------------------------------------------------------------------------------ report

def _f(v: Any, digits: int = 4) -> str:
    return "nan" if v is None or not np.isfinite(v) else f"{v:.{digits}f}"


def _window_table(res: dict) -> list[str]:
    names = res["field_names"]
    lines = ["| window | " + " | ".join(names) + " | mean |", "|---|" + "---|" * (len(names) + 1)]
    rows = [(f"{a}:{b}", np.asarray(m)) for (a, b), m in zip(res["windows"], res["window_means"])]
    rows.append(("all", np.asarray(res["all_mean"])))
    for label, vals in rows:
        lines.append(f"| {label} | " + " | ".join(_f(v) for v in vals) + f" | {_f(vals.mean())} |")
    return lines


def write_report(runs: list[dict], out: Path, files: list[Path]) -> str:
    """``report.md``: runs, rollout / one-step VRMSE tables, NEPS bands, AE reconstruction, training, plots."""
    L = ["# tokpre analysis", "", "| run | workdir | stage | step | dataset | details |", "|---|---|---|---|---|---|"]
    for r in runs:
        cfg = r["config"]
        det = (f"tokeniser {cfg.dyn.tokeniser}, compression {tuple(cfg.dyn.compression)}" if r["stage"] == "dyn"
               else f"compressions {[tuple(c) for c in r['compressions']]}")
        L.append(f"| {r['label']} | `{r['workdir']}` | {r['stage']} | {r['step']} | {r['dataset']} | {det} |")
    dyn_runs = [r for r in runs if r["stage"] == "dyn"]
    ae_runs = [r for r in runs if r["stage"] == "ae"]
    if dyn_runs:
        L += ["", f"## Rollout VRMSE ({dyn_runs[0]['split']} split, physical units)", "",
              "Mean over trajectories, then over The Well's log-spaced windows of predicted steps (0-based, end "
              "exclusive). *Rollout*: autoregressive from the first `dyn.n_steps_input` true frames; *one-step*: "
              "teacher-forced, each step predicted from the true frames before it.", "",
              "| run | " + " | ".join(f"{a}:{b}" for a, b in dyn_runs[0]["result"]["rollout"]["windows"])
              + " | all | one-step all |",
              "|---|" + "---|" * (len(dyn_runs[0]["result"]["rollout"]["windows"]) + 2)]
        for r in dyn_runs:
            ro, os_ = r["result"]["rollout"], r["result"]["one_step"]
            if len(ro["windows"]) == len(dyn_runs[0]["result"]["rollout"]["windows"]):
                L.append(f"| {r['label']} | " + " | ".join(_f(np.mean(m)) for m in ro["window_means"])
                         + f" | {_f(np.mean(ro['all_mean']))} | {_f(np.mean(os_['all_mean']))} |")
        for r in dyn_runs:
            res = r["result"]
            L += ["", f"### {r['label']}: rollout ({res['n_trajectories']} trajectories, {res['n_steps']} steps)",
                  ""] + _window_table(res["rollout"])
            L += ["", f"### {r['label']}: one-step", ""] + _window_table(res["one_step"])
        L += ["", "## NEPS of the rollout in The Well's bands", "",
              "Normalised error power spectrum (error power / target power per isotropic wavenumber shell), averaged "
              "in The Well's three log-spaced bands weighted by target power; 1 means the error is as large as the "
              "signal at those scales.", "",
              "| run | kind | low | mid | high |", "|---|---|---|---|---|"]
        for r in dyn_runs:
            for kind in ("rollout", "one_step"):
                b = r["result"][kind]["neps"]["bands"]["mean"]
                L.append(f"| {r['label']} | {kind.replace('_', '-')} | " + " | ".join(_f(b[k]) for k in BANDS) + " |")
    if ae_runs:
        L += ["", f"## AE reconstruction ({ae_runs[0]['split']} split, physical units)", ""]
        for r in ae_runs:
            names = r["field_names"]
            L += [f"### {r['label']}", "",
                  "| t | s | ratio | " + " | ".join(names) + " | mean VRMSE | NEPS low | NEPS mid | NEPS high |",
                  "|---|---|---|" + "---|" * (len(names) + 4)]
            for rec in r["result"]["reconstruction"].values():
                b = rec["neps"]["bands"]["mean"]
                L.append(f"| {rec['t']} | {rec['s']} | {rec['ratio']:.1f} | "
                         + " | ".join(_f(rec["fields"][n]) for n in names)
                         + f" | {_f(rec['mean'])} | " + " | ".join(_f(b[k]) for k in BANDS) + " |")
            L.append("")
    L += ["", "## Training", "", "| run | last logged step | train loss | eval VRMSE |", "|---|---|---|---|"]
    for r in runs:
        tr = [m for m in r["history"] if "train/loss" in m]
        ev = [m for m in r["history"] if "eval/vrmse" in m]
        L.append(f"| {r['label']} | {tr[-1]['step'] if tr else '-'} | "
                 f"{_f(tr[-1]['train/loss']) if tr else '-'} | {_f(ev[-1]['eval/vrmse']) if ev else '-'} |")
    L += ["", "## Plots", ""] + [f"![{p.stem}]({p.name})" for p in files]
    text = "\n".join(L) + "\n"
    (out / "report.md").write_text(text)
    return text


# ------------------------------------------------------------------------------------------------ driver

def _labels(workdirs: Sequence[Path], labels: Sequence[str] | None) -> list[str]:
    if labels:
        if len(labels) != len(workdirs):
            raise ValueError(f"--labels: expected one label per --workdir ({len(workdirs)}), found {len(labels)}")
        base = list(labels)
    else:
        base = [Path(w).name or str(w) for w in workdirs]
    out, seen = [], {}
    for b in base:                                                    # the same name twice: b, b-2, ...
        seen[b] = seen.get(b, 0) + 1
        out.append(b if seen[b] == 1 else f"{b}-{seen[b]}")
    return out


def _stages_of(workdir: Path, stage: str) -> list[str | None]:
    if stage == "auto":
        return [None]
    if stage == "all":
        found = [s for s in RUN_STAGES if (workdir / s / "checkpoints").is_dir()]
        if not found:
            raise FileNotFoundError(f"--stage=all: no stage checkpoints under {workdir} (expected "
                                    f"{workdir}/ae/checkpoints or {workdir}/dyn/checkpoints)")
        return found
    if stage not in RUN_STAGES:
        raise ValueError(f"--stage: expected auto, all or one of {RUN_STAGES}, found {stage!r}")
    return [stage]


def analyse(workdirs: Sequence[str | Path], *, out: str | Path | None = None, labels: Sequence[str] | None = None,
            stage: str = "auto", steps: Sequence[int | None] | None = None,
            options: Options = Options()) -> Path:
    """Restores each run, evaluates it, and writes ``metrics.json``, ``report.md`` and PNGs; returns the folder.

    ``steps``: a checkpoint step per workdir (None or an empty list: the latest of each).
    """
    if not workdirs:
        raise ValueError("tokpre.analyse: give at least one --workdir")
    workdirs = [Path(w).absolute() for w in workdirs]
    for w in workdirs:
        if not w.is_dir():
            raise FileNotFoundError(f"tokpre.analyse: workdir {w} does not exist")
    steps = list(steps or [None] * len(workdirs))
    if len(steps) == 1 and len(workdirs) > 1:
        steps = steps * len(workdirs)
    if len(steps) != len(workdirs):
        raise ValueError(f"--steps: expected one step per --workdir ({len(workdirs)}) or one for all, "
                         f"found {len(steps)}")
    names = _labels(workdirs, labels)
    out = Path(out).absolute() if out else workdirs[0] / "report"
    out.mkdir(parents=True, exist_ok=True)

    runs = []
    for w, name, step in zip(workdirs, names, steps):
        stages = _stages_of(w, stage)
        for s in stages:
            run = load_run(w, s, step)
            if options.well_base_path:
                run = _rebase(run, options.well_base_path)
            if run.field_ids is None:
                raise FileNotFoundError(f"tokpre.analyse: dataset {run.dataset!r} ({options.split} split) not found "
                                        f"under {run.config.data.well_base_path} (config key data.well_base_path "
                                        f"in {w / 'config.json'}); pass --well_base_path")
            label = name if len(stages) == 1 else f"{name}/{run.stage}"
            print(f"tokpre.analyse: {label}: {run.stage} checkpoint at step {run.step} of {w}", flush=True)
            result, arrays = analyse_dyn(run, options) if run.stage == "dyn" else analyse_ae(run, options)
            runs.append({"label": label, "workdir": str(w), "stage": run.stage, "step": run.step,
                         "dataset": run.dataset, "config": run.config, "compressions": run.compressions,
                         "field_names": list(run.field_names), "split": options.split,
                         "spatial": tuple(well.WellSplit(run.config.data.well_base_path, run.dataset,
                                                         options.split).resolution),
                         "history": loop.read_metrics(w / run.stage), "result": result, "arrays": arrays})

    files = []
    dyn_runs = [r for r in runs if r["stage"] == "dyn"]
    ae_runs = [r for r in runs if r["stage"] == "ae"]
    if dyn_runs:
        plot_rollout(dyn_runs, out / "rollout_vrmse.png")
        plot_neps_dyn(dyn_runs, out / "neps.png")
        files += [out / "rollout_vrmse.png", out / "neps.png"]
    if ae_runs:
        plot_neps_ae(ae_runs, out / "neps_ae.png")
        files.append(out / "neps_ae.png")
    plot_training(runs, out / "training.png")
    files.append(out / "training.png")
    for r in runs:
        files += plot_snapshots(r, out, options.snapshot_steps, options.snapshot_fields)

    doc = {"options": dataclasses.asdict(options),
           "runs": {r["label"]: {k: r[k] for k in ("workdir", "stage", "step", "dataset", "split", "field_names")}
                    | r["result"] for r in runs},
           "files": [p.name for p in files]}
    (out / "metrics.json").write_text(json.dumps(_jsonable(doc), indent=1))
    write_report(runs, out, files)
    print(f"tokpre.analyse: report written to {out} (report.md, metrics.json, {len(files)} plots)", flush=True)
    return out


def _rebase(run: Run, base_path: str) -> Run:
    """``run`` with ``config.data.well_base_path`` replaced and its dataset info re-read from there."""
    cfg = run.config
    cfg.data.well_base_path = str(base_path)
    sp = well.WellSplit(base_path, run.dataset, "test")
    return dataclasses.replace(run, config=cfg, field_names=tuple(sp.field_names),
                               field_ids=FieldVocab().ids(sp.field_names, int(cfg.model.tokeniser.vocab_size)),
                               periodic=common.periodic_of(sp.boundary))


def _ints(s: str) -> list[int]:
    try:
        return [int(v) for v in s.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, found {s!r}") from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tokpre.analyse", description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", action="append", required=True, help="a run's workdir (repeat for several runs)")
    p.add_argument("--out", default="", help="report folder (default: <first workdir>/report)")
    p.add_argument("--labels", default="", help="comma-separated run labels (default: the workdir names)")
    p.add_argument("--stage", default="auto", help="auto | ae | dyn | all")
    p.add_argument("--steps", type=_ints, default=[], help="checkpoint step per workdir, or one for all "
                                                           "(default: the latest)")
    p.add_argument("--split", default="test")
    p.add_argument("--trajectories", type=int, default=0, help="test trajectories to roll out (0: all)")
    p.add_argument("--max_steps", type=int, default=0, help="rollout length (0: config dyn.rollout_max_steps)")
    p.add_argument("--batch_size", type=int, default=0, help="evaluation batch (0: config data.batch_size)")
    p.add_argument("--eval_batches", type=int, default=0, help="AE evaluation batches (0: all)")
    p.add_argument("--compressions", default="trained", help="AE: 'trained', 'all' or 't,s;t,s'")
    p.add_argument("--snapshot_steps", type=_ints, default=[1, 10, 50, 100],
                   help="rollout steps (1-based) shown in the snapshot plots")
    p.add_argument("--snapshot_fields", default="", help="comma-separated fields to plot snapshots of (default: all)")
    p.add_argument("--well_base_path", default="", help="dataset folder (default: the run's data.well_base_path)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    opts = Options(split=a.split, trajectories=a.trajectories, max_steps=a.max_steps, batch_size=a.batch_size,
                   eval_batches=a.eval_batches, compressions=a.compressions, snapshot_steps=tuple(a.snapshot_steps),
                   snapshot_fields=tuple(f for f in a.snapshot_fields.split(",") if f),
                   well_base_path=a.well_base_path)
    labels = [s for s in a.labels.split(",") if s] if a.labels else None
    analyse(a.workdir, out=a.out or None, labels=labels, stage=a.stage, steps=a.steps or None, options=opts)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
