"""Train-step benchmarks for ``python -m tokpre.bench``: ``ae``, ``dyn`` and ``flops``.

Every figure that matters is a ratio of two rates measured in the same process, so the numbers compare across
machines: ``ae`` reports pipeline windows/s over the windows/s the stage-1 step consumes (target >= 5x, so input
never limits training); ``dyn`` reports the frozen-tokeniser stage-2 step with the latent cache over the same
step without it (target >= 3x); ``flops`` prints XLA's cost analysis of each stage's compiled step.
"""

from __future__ import annotations

import argparse
import importlib.util
import time

import jax
import jax.numpy as jnp
import numpy as np


def _config(spec: str):
    path, _, arg = spec.partition(":")
    mod_spec = importlib.util.spec_from_file_location("bench_config", path)
    mod = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(mod)
    from tokpre.config import sync_schedule
    return sync_schedule(mod.get_config(arg))


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default="configs/ae_then_dyn.py", help="config file[:variant]")
    p.add_argument("--base_path", default="", help="override config data.well_base_path")
    p.add_argument("--steps", type=int, default=10, help="timed steps after compilation")


def _time(fn, n: int) -> float:
    """Seconds per call of ``fn`` (already compiled), blocking on its result."""
    jax.block_until_ready(fn())
    t0 = time.perf_counter()
    out = None
    for _ in range(n):
        out = fn()
    jax.block_until_ready(out)
    return (time.perf_counter() - t0) / n


def run_ae(args: argparse.Namespace) -> int:
    """Stage-1 step windows/s vs Grain pipeline windows/s (ratio target >= 5x)."""
    from tokpre import sharding as shd
    from tokpre.data import pipeline
    from tokpre.train import ae, common
    from tokpre.train.state import make_train_step
    cfg = _config(args.config)
    if args.base_path:
        cfg.data.well_base_path = args.base_path
    ds = list(cfg.ae.datasets)[0]
    common.ensure_datasets(cfg, [ds])
    mesh = shd.make_mesh(cfg.mesh.shape)
    bs = int(cfg.data.batch_size)
    it = pipeline.make_train_iterator(cfg.data.well_base_path, ds, n_steps_input=int(cfg.ae.n_frames),
                                      n_steps_output=0, batch_size=bs, seed=0, flip=bool(cfg.data.flip),
                                      roll=bool(cfg.data.roll), log_fields=tuple(cfg.data.log_fields))
    for _ in range(3):
        b = next(it)
    n_pipe = max(args.steps, 10)
    t0 = time.perf_counter()
    for _ in range(n_pipe):
        b = next(it)
    pipe_wps = n_pipe * bs / (time.perf_counter() - t0)

    model, tx, state, _ = ae.build(cfg, mesh)
    periodic = common.periodic_of(b["boundary"])
    batch = shd.global_batch({"input_fields": b["input_fields"], "field_ids": b["field_ids"]}, mesh)
    rates = {}
    comps = ae.compressions_of(cfg)
    probs = dict(zip(comps, ae.compression_probabilities(cfg, comps)))
    for comp in comps:
        step = jax.jit(make_train_step(ae.make_loss_fn(model, periodic=periodic, compression=comp,
                                                       loss=str(cfg.ae.loss), jitter=bool(cfg.ae.jitter)), tx))
        holder = {"s": state}

        def one():
            holder["s"], m = step(holder["s"], batch)
            return m["loss"]
        rates[comp] = bs / _time(one, args.steps)
    # Training samples compression c with probability p_c: the consumed rate is the weighted harmonic mean.
    step_wps = 1.0 / sum(probs[c] / r for c, r in rates.items())
    print(f"bench ae: {ds} batch {tuple(b['input_fields'].shape)}, optimizer {cfg.ae.optimizer.name}")
    for comp, r in rates.items():
        print(f"  step at compression {comp}: {r:.1f} windows/s (sampled with probability {probs[comp]:.2f})")
    print(f"  stage-1 step (sampling mix): {step_wps:.1f} windows/s; pipeline: {pipe_wps:.1f} windows/s; "
          f"pipeline/step ratio {pipe_wps / step_wps:.1f}x (target >= 5x)")
    return 0


def run_dyn(args: argparse.Namespace) -> int:
    """Frozen-tokeniser stage-2 steps/s with vs without the latent cache (ratio target >= 3x)."""
    from tokpre import sharding as shd
    from tokpre.train import dyn
    from tokpre.train.state import make_train_step
    cfg = _config(args.config)
    cfg.dyn.tokeniser = "frozen"
    if args.compression:
        cfg.dyn.compression = tuple(int(v) for v in args.compression.split(","))
    mesh = shd.make_mesh(cfg.mesh.shape)
    model, comp, _, trainable, tx, _, state, _ = dyn.build(cfg, mesh)
    bs, n_in, t = int(cfg.data.batch_size), int(cfg.dyn.n_steps_input), comp[0]
    res = args.resolution or int(cfg.data.generate.resolution) or 64
    d = int(cfg.model.tokeniser.n_spatial_dims)
    c = 5
    rng = np.random.default_rng(0)
    fields = {"input_fields": jnp.asarray(rng.normal(size=(bs, n_in, *(res,) * d, c)), jnp.float32),
              "output_fields": jnp.asarray(rng.normal(size=(bs, t, *(res,) * d, c)), jnp.float32),
              "field_ids": jnp.arange(c, dtype=jnp.int32)}
    periodic = (True,) * d
    z = jax.jit(lambda p, x: model.apply({"params": p}, x, fields["field_ids"], periodic=periodic,
                                         compression=comp, method="encode"))(
        state.params, jnp.concatenate([fields["input_fields"], fields["output_fields"]], 1))
    latents = {"z_in": z[:, :-1], "z_out": z[:, -1:]}
    out, flops = {}, {}
    from tokpre.train.cost import step_flops
    for name, loss, batch in (
            ("no cache (encode + process + decode)", dyn.make_field_loss(model, periodic=periodic, comp=comp,
                                                                          kind="mse"), fields),
            ("latent cache (process only)", dyn.make_latent_loss(model), latents)):
        fn = make_train_step(loss, tx, trainable)
        flops[name] = step_flops(fn, state, batch)
        step = jax.jit(fn)
        holder = {"s": state}

        def one():
            holder["s"], m = step(holder["s"], batch)
            return m["loss"]
        out[name] = 1 / _time(one, args.steps)
    (n0, r0), (n1, r1) = out.items()
    f0, f1 = flops[n0], flops[n1]
    print(f"bench dyn: frozen tokeniser, batch {bs}, {n_in} input frames at {res}^{d}, compression {comp}, "
          f"latent {tuple(latents['z_in'].shape)}")
    print(f"  {n0}: {r0:.2f} steps/s, {f0:.3g} FLOPs/step\n  {n1}: {r1:.2f} steps/s, {f1:.3g} FLOPs/step\n"
          f"  cache speed-up {r1 / r0:.1f}x measured (target >= 3x); FLOP ratio {f0 / f1:.1f}x")
    return 0


def add_dyn_args(p: argparse.ArgumentParser) -> None:
    add_args(p)
    p.add_argument("--resolution", type=int, default=0, help="grid side (default: the config's data resolution, 64)")
    p.add_argument("--compression", default="", help="t,s for the emulator (default: config dyn.compression)")


def run_flops(args: argparse.Namespace) -> int:
    """Parameter counts and per-step FLOPs of both stages from the compiled steps (abstract inputs)."""
    from tokpre.train import cost
    cfg = _config(args.config)
    res = tuple(int(r) for r in args.resolution.split("x"))
    for stage in ("ae", "dyn"):
        fn, st, b = cost.abstract_step(cfg, stage, res, args.channels)
        counts = {k: cost.param_count(v) for k, v in st.params.items()}
        print(f"bench flops: {stage}: parameters {counts}; {cost.step_flops(fn, st, b):.3e} FLOPs per step "
              f"(global batch {cfg.data.batch_size}, {'x'.join(map(str, res))}, {args.channels} fields)")
    return 0


def add_flops_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default="configs/ae_then_dyn.py", help="config file[:variant]")
    p.add_argument("--resolution", default="64x64", help="e.g. 512x512 for The Well's Euler")
    p.add_argument("--channels", type=int, default=5)
