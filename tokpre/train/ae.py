"""Stage 1: pretrain the tokeniser as an autoencoder.

Each step reconstructs a window of ``ae.n_frames`` frames at a compression ``(t, s)`` sampled per step from
``ae.compressions`` (default: every allowed pair) with probabilities ``ae.compression_weights`` (default: uniform),
so one parameter set serves every ratio. Optional patch jittering rolls each sample on its periodic axes by less
than one total stride before encoding and rolls the reconstruction back. ``ae.eval_every > 0`` logs the
reconstruction VRMSE on ``ae.eval_batches`` batches of the valid split during training. The stage ends with the
reconstruction VRMSE (physical units, The Well's definition) over every window of the test split for every allowed
ratio (or ``ae.eval_compressions``), printed and written to ``<workdir>/ae/reconstruction.json``.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from tokpre import sharding as shd
from tokpre.data import pipeline, well
from tokpre.data.fields import FieldVocab
from tokpre.eval import metrics
from tokpre.models.tokeniser import compression_ratio, jitter_roll, unroll
from tokpre.train import common, loop
from tokpre.train.optim import make_optimizer
from tokpre.train.state import create_sharded_state, make_train_step

STAGE = "ae"


def reconstruction_loss(recon: jax.Array, x: jax.Array, kind: str) -> jax.Array:
    """Loss on normalised fields: 'mse' or 'vrmse' (mean of per-sample, per-frame, per-channel VRMSE)."""
    if kind == "mse":
        return jnp.mean((recon - x) ** 2)
    if kind == "vrmse":
        return jnp.mean(metrics.vrmse(recon, x))
    raise ValueError(f"config key ae.loss: expected 'mse' or 'vrmse', found {kind!r}")


def make_loss_fn(model, *, periodic: tuple[bool, ...], compression: tuple[int, int], loss: str, jitter: bool):
    """``loss_fn(params, batch, rng) -> (loss, metrics)`` for one static (periodicity, compression)."""
    s = compression[1]

    def loss_fn(params, batch, rng):
        x = batch["input_fields"]                      # (B, T, *N, C), normalised
        ids = batch["field_ids"]
        if jitter and any(periodic):
            xj, shifts = jitter_roll(x, rng, periodic, s)
            recon = unroll(model.apply({"params": params}, xj, ids, periodic=periodic, compression=compression),
                           shifts, periodic)
        else:
            recon = model.apply({"params": params}, x, ids, periodic=periodic, compression=compression)
        lval = reconstruction_loss(recon, x, loss)
        return lval, {"mse": jnp.mean((recon - x) ** 2)}

    return loss_fn


def init_fn(model, cfg, n_channels: int = 1):
    """Parameter initialiser (logically boxed); shapes do not depend on the data resolution."""
    d = int(cfg.model.tokeniser.n_spatial_dims)
    t_max = max(int(t) for t in cfg.model.tokeniser.temporal_factors)
    s_max = max(int(s) for s in cfg.model.tokeniser.spatial_factors)
    x = jnp.zeros((1, t_max, *(s_max,) * d, n_channels), jnp.float32)
    ids = jnp.zeros((n_channels,), jnp.int32)

    def init(key):
        return model.init(key, x, ids, periodic=(True,) * d, compression=(t_max, s_max))["params"]

    return init


def compressions_of(cfg) -> list[tuple[int, int]]:
    allowed = common.all_compressions(cfg)
    chosen = [tuple(int(v) for v in c) for c in cfg.ae.compressions] or allowed
    bad = [c for c in chosen if c not in allowed]
    if bad:
        raise ValueError(f"config key ae.compressions: {bad} not allowed by model.tokeniser "
                         f"(temporal_factors x spatial_factors = {allowed})")
    nf = int(cfg.ae.n_frames)
    bad_t = sorted({t for t, _ in chosen if nf % t})
    if bad_t:
        raise ValueError(f"config key ae.n_frames={nf} must be a multiple of every temporal factor used, "
                         f"found {bad_t}")
    return chosen


def compression_probabilities(cfg, comps: list[tuple[int, int]]) -> np.ndarray:
    """Sampling probability of each entry of ``comps`` from ``ae.compression_weights`` (empty: uniform)."""
    w = [float(v) for v in cfg.ae.get("compression_weights", ())]
    if not w:
        return np.full(len(comps), 1.0 / len(comps))
    if len(w) != len(comps) or min(w) < 0 or sum(w) <= 0:
        raise ValueError(f"config key ae.compression_weights: expected {len(comps)} non-negative weights (one per "
                         f"compression {comps}) with a positive sum, found {tuple(w)}")
    return np.asarray(w) / sum(w)


def evaluate_reconstruction(model, params, cfg, mesh, dataset: str, *, split: str = "test",
                            max_batches: int = 0, compressions=None) -> dict:
    """Reconstruction VRMSE in physical units for each compression: ``{"t,s": {"fields": {...}, "mean": v}}``."""
    base = cfg.data.well_base_path
    nf = int(cfg.ae.n_frames)
    local_bs = common.local_batch_size(int(cfg.data.batch_size), mesh)
    sp = well.WellSplit(base, dataset, split)
    n_total = sp.num_windows(nf, 0, 1)
    n_batches = common.eval_batch_count(n_total, local_bs, max_batches)
    if n_batches == 0:
        raise ValueError(f"{dataset}/{split}: {n_total} windows of {nf} frames cannot fill one batch of "
                         f"{local_bs} per process; lower data.batch_size")
    batches = pipeline.make_eval_batches(base, dataset, split=split, n_steps_input=nf, n_steps_output=0,
                                         batch_size=local_bs, max_batches=n_batches,
                                         log_fields=tuple(cfg.data.log_fields),
                                         vocab_size=int(cfg.model.tokeniser.vocab_size),
                                         shard_index=jax.process_index(), shard_count=jax.process_count())
    norm = common.normaliser(str(base), dataset, tuple(cfg.data.log_fields))
    names = sp.field_names
    out = {}
    for comp in (compressions or common.all_compressions(cfg)):
        if nf % comp[0]:
            continue
        sums, count, periodic = None, 0, None
        for b in batches:
            periodic = common.periodic_of(b["boundary"])
            gb = shd.global_batch({"input_fields": b["input_fields"], "field_ids": b["field_ids"]}, mesh)
            v = _eval_vrmse(model, periodic, comp, norm)(params, gb["input_fields"], gb["field_ids"])
            v = np.asarray(jax.device_get(v))
            sums = v if sums is None else sums + v
            count += 1
        per_field = sums / count
        ratio = compression_ratio((1, nf, *sp.resolution, len(names)), comp,
                                  int(cfg.model.tokeniser.latent_channels))
        out[f"{comp[0]},{comp[1]}"] = {"t": comp[0], "s": comp[1], "ratio": ratio,
                                       "fields": dict(zip(names, map(float, per_field))),
                                       "mean": float(per_field.mean()), "batches": count}
    return out


@functools.lru_cache(maxsize=64)
def _eval_vrmse(model, periodic, comp, norm):
    @jax.jit
    def f(params, x, ids):
        recon = model.apply({"params": params}, x, ids, periodic=periodic, compression=comp)
        v = metrics.vrmse(norm.denormalise(recon), norm.denormalise(x))   # (B, T, C), physical units
        return jnp.mean(v, axis=(0, 1))
    return f


def format_table(results: dict[str, dict]) -> str:
    """Markdown table: one row per (dataset, compression), one column per field plus the mean."""
    lines = []
    for ds, res in results.items():
        names = list(next(iter(res.values()))["fields"])
        lines.append(f"Reconstruction VRMSE on {ds} (test split, physical units)")
        lines.append("| t | s | ratio | " + " | ".join(names) + " | mean |")
        lines.append("|---|---|---|" + "---|" * (len(names) + 1))
        for r in res.values():
            lines.append(f"| {r['t']} | {r['s']} | {r['ratio']:.1f} | "
                         + " | ".join(f"{r['fields'][n]:.4f}" for n in names) + f" | {r['mean']:.4f} |")
    return "\n".join(lines)


def build(cfg, mesh):
    """Model, optimiser, sharded state: shared by the stage and by tools that restore it."""
    model = common.tokeniser_from_config(cfg)
    tx, _ = make_optimizer(cfg.ae.optimizer)
    rules = shd.get_rules(cfg.mesh.rules)
    state, state_sh = create_sharded_state(init_fn(model, cfg), tx, mesh, rules, int(cfg.seed))
    return model, tx, state, state_sh


def run_stage(cfg, workdir: Path, mesh) -> None:
    datasets = list(cfg.ae.datasets)
    common.ensure_datasets(cfg, datasets)
    steps = int(cfg.ae.steps)
    opened = common.open_stage(STAGE, workdir, steps, "reconstruction.json")
    if opened is None:
        return
    stage_dir, report, ckpt, latest = opened

    comps = compressions_of(cfg)
    probs = compression_probabilities(cfg, comps)
    weighted = bool(cfg.ae.get("compression_weights", ()))
    model, tx, state, state_sh = build(cfg, mesh)
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params))
    local_bs = common.local_batch_size(int(cfg.data.batch_size), mesh)
    it = pipeline.make_train_iterator(
        cfg.data.well_base_path, datasets, n_steps_input=int(cfg.ae.n_frames), n_steps_output=0,
        batch_size=local_bs, seed=int(cfg.seed), min_dt=int(cfg.data.min_dt), max_dt=int(cfg.data.max_dt),
        flip=bool(cfg.data.flip), roll=bool(cfg.data.roll), log_fields=tuple(cfg.data.log_fields),
        vocab_size=int(cfg.model.tokeniser.vocab_size), shard_index=jax.process_index(),
        shard_count=jax.process_count(), num_workers=int(cfg.data.num_workers))
    meta = {"stage": STAGE, "vocab": FieldVocab().names, "datasets": datasets,
            "compressions": [list(c) for c in comps]}
    if latest is not None:
        state, _ = ckpt.restore(latest, state, state_sh, data_iter=it)
        common.say(f"[ae] resumed from step {latest}")
    mix = ", ".join(f"({t},{s_}): {p:.2f}" for (t, s_), p in zip(comps, probs))
    common.say(f"[ae] tokeniser with {n_params / 1e6:.2f}M parameters on {datasets}; compression sampling "
               f"{{{mix}}}; {steps} steps, global batch {cfg.data.batch_size}")

    def make_step(key):
        periodic, comp = key
        return make_train_step(make_loss_fn(model, periodic=periodic, compression=comp, loss=str(cfg.ae.loss),
                                            jitter=bool(cfg.ae.jitter)), tx)

    steps_fn = common.CompiledSteps(make_step, state_sh, mesh)
    logged_ratios: set = set()

    def step_fn(st, batch):
        # The compression of step k is a pure function of (seed, k): a resumed run draws the same sequence.
        rng = np.random.default_rng([int(cfg.seed), step_fn.k])
        comp = comps[rng.choice(len(comps), p=probs) if weighted else rng.integers(len(comps))]
        periodic = common.periodic_of(batch["boundary"])
        if comp not in logged_ratios:
            logged_ratios.add(comp)
            shape = batch["input_fields"].shape
            common.say(f"[ae] compression (t={comp[0]}, s={comp[1]}): ratio "
                       f"{compression_ratio(shape, comp, int(cfg.model.tokeniser.latent_channels)):.1f} "
                       f"(input numbers / latent numbers) for input {tuple(shape)}")
        step_fn.k += 1
        return steps_fn((periodic, comp), st, batch)

    step_fn.k = int(jax.device_get(state.step))

    def next_batch():
        return shd.global_batch(next(it), mesh)

    eval_comps = [tuple(int(v) for v in c) for c in cfg.ae.eval_compressions] or None

    def eval_fn(st):
        # Progress check on the valid split (the test split is kept for the final table).
        out = {}
        for ds in datasets:
            res = evaluate_reconstruction(model, st.params, cfg, mesh, ds, split="valid",
                                          max_batches=int(cfg.ae.eval_batches), compressions=eval_comps)
            tag = "" if len(datasets) == 1 else f"{ds}/"
            out.update({f"{tag}vrmse_t{r['t']}_s{r['s']}": r["mean"] for r in res.values()})
        return out

    state = loop.run(name=STAGE, stage_dir=stage_dir, step_fn=step_fn, state=state, next_batch=next_batch,
                     total_steps=steps, ckpt=ckpt, data_iter=it, meta=meta, log_every=int(cfg.ae.log_every),
                     ckpt_every=int(cfg.ae.ckpt_every), eval_every=int(cfg.ae.eval_every),
                     eval_fn=eval_fn if int(cfg.ae.eval_every) else None)

    # The final table: every window of the test split ("mean over fields and test frames").
    results = {ds: evaluate_reconstruction(model, state.params, cfg, mesh, ds, max_batches=0,
                                           compressions=eval_comps) for ds in datasets}
    common.say(format_table(results))
    if jax.process_index() == 0:
        report.write_text(json.dumps(results, indent=2))
    ckpt.close()
