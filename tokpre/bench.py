"""Throughput benchmarks: ``python -m tokpre.bench <subcommand> [flags]``.

Subcommands are registered in ``SUBCOMMANDS`` (name -> (add_arguments(parser), run(args) -> int)).

``ae``: stage-1 step windows/s at every trained compression vs the Grain pipeline's windows/s, as a ratio
(target >= 5x). ``dyn``: frozen-tokeniser stage-2 steps/s with the latent cache vs without (target >= 3x).
``flops``: parameter counts and per-step FLOPs of both stages from XLA's cost analysis, e.g.
``python -m tokpre.bench flops --config=configs/ae_then_dyn.py:paper --resolution=512x512``.

``memory``: per-device memory of a ~100M-parameter processor train step compiled abstractly (nothing allocated)
on 8 simulated CPU devices, data parallel vs FSDP, and their ratio (target: FSDP's parameter + optimizer bytes per
device <= 1/6 of data parallel's). ``python -m tokpre.bench memory [--optimizers=adamw,soap]``.

``data``: Grain input pipeline throughput (windows/s) on one Well dataset. It generates nothing; point
``--base_path`` at a folder holding ``<dataset>/data/train`` and ``<dataset>/stats.yaml``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable

from tokpre import bench_train

DEFAULT_BASE_PATH = os.path.join("data", "datasets")
DEFAULT_DATASET = "euler_multi_quadrants_periodicBC"


def _add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--base_path", default=DEFAULT_BASE_PATH, help="folder with <dataset>/data/<split>/*.hdf5")
    p.add_argument("--dataset", default=DEFAULT_DATASET)
    p.add_argument("--split", default="train")
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--n_steps_input", type=int, default=4)
    p.add_argument("--n_steps_output", type=int, default=1)
    p.add_argument("--max_dt", type=int, default=1)
    p.add_argument("--n_batches", type=int, default=20, help="timed batches after warm-up")
    p.add_argument("--warmup", type=int, default=3, help="untimed batches first (opens files, fills prefetch)")
    p.add_argument("--num_workers", type=int, default=0, help="Grain worker processes (0: threads only)")
    p.add_argument("--read_threads", type=int, default=2)
    p.add_argument("--no_augment", action="store_true", help="disable flips and rolls")
    p.add_argument("--log_fields", default="", help="comma-separated channels to log-transform")
    p.add_argument("--seed", type=int, default=0)


def run_data(args: argparse.Namespace) -> int:
    """Times the training iterator and prints one line with windows/s."""
    ds_dir = os.path.join(args.base_path, args.dataset)
    if not os.path.isdir(os.path.join(ds_dir, "data", args.split)):
        print(f"bench data: {os.path.join(ds_dir, 'data', args.split)} not found. Generate the dataset with "
              f"`python -m tokpre.data.generate` into that folder, or pass "
              f"--base_path/--dataset for an existing Well download.", file=sys.stderr)
        return 2
    from tokpre.data import pipeline

    log_fields = tuple(f for f in args.log_fields.split(",") if f)
    t_build = time.perf_counter()
    it = pipeline.make_train_iterator(
        args.base_path, args.dataset, n_steps_input=args.n_steps_input, n_steps_output=args.n_steps_output,
        batch_size=args.batch_size, seed=args.seed, max_dt=args.max_dt, flip=not args.no_augment,
        roll=not args.no_augment, log_fields=log_fields, shard_index=0, shard_count=1,
        num_workers=args.num_workers, split=args.split, read_threads=args.read_threads)
    batch = None
    for _ in range(max(args.warmup, 0)):
        batch = next(it)
    t_warm = time.perf_counter()
    for _ in range(args.n_batches):
        batch = next(it)
    t_end = time.perf_counter()
    dt = max(t_end - t_warm, 1e-9)
    windows = args.n_batches * args.batch_size
    shape = tuple(batch["input_fields"].shape) if batch is not None else ()
    nbytes = sum(v.nbytes for v in batch.values()) if batch is not None else 0
    print(f"bench data: {args.dataset}/{args.split} input_fields {shape} workers={args.num_workers} "
          f"threads={args.read_threads} augment={not args.no_augment}: {windows / dt:.1f} windows/s "
          f"({args.n_batches / dt:.2f} batches/s, {nbytes * args.n_batches / dt / 2**20:.1f} MiB/s, "
          f"setup+warm-up {t_warm - t_build:.1f}s)")
    return 0


# ------------------------------------------------------------------------------------------------ memory

MEMORY_DEVICES = 8
_MEMORY_CHILD_ENV = "TOKPRE_BENCH_MEMORY_CHILD"


def _add_memory_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--d_model", type=int, default=768)
    p.add_argument("--num_layers", type=int, default=12)
    p.add_argument("--num_heads", type=int, default=12)
    p.add_argument("--mlp_ratio", type=int, default=4)
    p.add_argument("--latent", type=int, default=64, help="latent channels L")
    p.add_argument("--grid", type=int, default=8, help="latent grid n (n x n tokens per frame)")
    p.add_argument("--frames", type=int, default=2, help="latent input frames T'")
    p.add_argument("--batch_size", type=int, default=8, help="global batch (a multiple of 8)")
    p.add_argument("--optimizers", default="adamw", help="comma-separated: adamw, soap")


def _memory_argv(args: argparse.Namespace) -> list[str]:
    return ["memory", f"--d_model={args.d_model}", f"--num_layers={args.num_layers}",
            f"--num_heads={args.num_heads}", f"--mlp_ratio={args.mlp_ratio}", f"--latent={args.latent}",
            f"--grid={args.grid}", f"--frames={args.frames}", f"--batch_size={args.batch_size}",
            f"--optimizers={args.optimizers}"]


def _bytes_per_device(abstract, shardings) -> int:
    """Bytes one device holds of ``abstract`` laid out by ``shardings`` (from the shardings' shard shapes)."""
    import jax
    import numpy as np
    total = 0
    for x, sh in zip(jax.tree.leaves(abstract), jax.tree.leaves(shardings)):
        total += int(np.prod(sh.shard_shape(x.shape), dtype=np.int64)) * np.dtype(x.dtype).itemsize
    return total


def _memory_one(model, tx, z_in, z_out, mesh, rules) -> dict:
    """Compiles one processor train step abstractly (ShapeDtypeStructs only) and returns its memory figures."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp
    import optax
    from tokpre import sharding as shd
    from tokpre.train.state import abstract_with_shardings

    boxed = jax.eval_shape(lambda k: model.init(k, jnp.zeros(z_in.shape, z_in.dtype))["params"], jax.random.key(0))
    p_sh = shd.params_shardings(boxed, mesh, rules)
    params = nn.unbox(boxed)
    opt = jax.eval_shape(tx.init, params)
    o_sh = shd.opt_state_shardings(opt, params, p_sh, mesh, rules)
    b_sh = shd.batch_sharding(mesh, z_in.ndim)

    def step(params, opt_state, z_in, z_out):
        def loss_fn(p):
            return jnp.mean((model.apply({"params": p}, z_in) - z_out) ** 2)
        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    fn = jax.jit(step, in_shardings=(p_sh, o_sh, b_sh, b_sh), out_shardings=(p_sh, o_sh, shd.replicated(mesh)),
                 donate_argnums=(0, 1))
    args = (abstract_with_shardings(params, p_sh), abstract_with_shardings(opt, o_sh),
            jax.ShapeDtypeStruct(z_in.shape, z_in.dtype, sharding=b_sh),
            jax.ShapeDtypeStruct(z_out.shape, z_out.dtype, sharding=b_sh))
    compiled = fn.lower(*args).compile()
    ma = compiled.memory_analysis()
    n_params = sum(int(x.size) for x in jax.tree.leaves(params))
    return {"n_params": n_params,
            "param_bytes": _bytes_per_device(params, p_sh), "opt_bytes": _bytes_per_device(opt, o_sh),
            "argument": getattr(ma, "argument_size_in_bytes", -1), "output": getattr(ma, "output_size_in_bytes", -1),
            "temp": getattr(ma, "temp_size_in_bytes", -1), "alias": getattr(ma, "alias_size_in_bytes", -1)}


def run_memory(args: argparse.Namespace) -> int:
    """Per-device memory of a ~100M-parameter processor train step on 8 devices: data parallel vs FSDP."""
    if os.environ.get(_MEMORY_CHILD_ENV) != "1":
        # 8 simulated CPU devices need XLA_FLAGS before JAX starts: re-run this subcommand in a child process.
        import subprocess
        env = {**os.environ, _MEMORY_CHILD_ENV: "1", "JAX_PLATFORMS": "cpu",
               "XLA_FLAGS": (os.environ.get("XLA_FLAGS", "") +
                             f" --xla_force_host_platform_device_count={MEMORY_DEVICES}").strip()}
        return subprocess.run([sys.executable, "-m", "tokpre.bench", *_memory_argv(args)], env=env).returncode
    import jax
    import jax.numpy as jnp
    import ml_collections
    from tokpre import sharding as shd
    from tokpre.models.processor import Processor
    from tokpre.train.optim import make_optimizer

    if jax.device_count() < MEMORY_DEVICES:
        print(f"bench memory: needs {MEMORY_DEVICES} devices, found {jax.device_count()} "
              f"({jax.devices()}); XLA_FLAGS={os.environ.get('XLA_FLAGS')!r}", file=sys.stderr)
        return 2
    if args.batch_size % MEMORY_DEVICES:
        print(f"bench memory: --batch_size={args.batch_size} must be a multiple of {MEMORY_DEVICES}", file=sys.stderr)
        return 2
    devices = jax.devices()[:MEMORY_DEVICES]
    model = Processor(d_model=args.d_model, num_layers=args.num_layers, num_heads=args.num_heads,
                      mlp_ratio=args.mlp_ratio, latent_channels=args.latent)
    z_in = jax.ShapeDtypeStruct((args.batch_size, args.frames, args.grid, args.grid, args.latent), jnp.float32)
    z_out = jax.ShapeDtypeStruct((args.batch_size, 1, args.grid, args.grid, args.latent), jnp.float32)
    layouts = [("data parallel", (MEMORY_DEVICES, 1, 1), "dp"), ("FSDP", (1, MEMORY_DEVICES, 1), "fsdp")]
    mib = lambda b: f"{b / 2**20:10.1f}"
    status = 0
    for opt_name in [o.strip() for o in args.optimizers.split(",") if o.strip()]:
        tx, _ = make_optimizer(ml_collections.ConfigDict(dict(name=opt_name, lr=1e-3, warmup_steps=10,
                                                               total_steps=100, weight_decay=1e-4)))
        res = {}
        for name, shape, rules in layouts:
            t0 = time.perf_counter()
            res[name] = _memory_one(model, tx, z_in, z_out, shd.make_mesh(shape, devices), shd.get_rules(rules))
            res[name]["compile_s"] = time.perf_counter() - t0
        n = res["FSDP"]["n_params"]
        print(f"bench memory: processor d_model={args.d_model} layers={args.num_layers} heads={args.num_heads} "
              f"mlp_ratio={args.mlp_ratio} L={args.latent}, {n / 1e6:.1f}M parameters, optimizer {opt_name}, "
              f"input z {tuple(z_in.shape)}, {MEMORY_DEVICES} CPU devices; MiB per device")
        print(f"{'layout':<14} {'params':>10} {'opt state':>10} {'p+opt':>10} {'arguments':>10} {'outputs':>10} "
              f"{'temp':>10} {'compile s':>9}")
        for name, r in res.items():
            print(f"{name:<14} {mib(r['param_bytes'])} {mib(r['opt_bytes'])} {mib(r['param_bytes'] + r['opt_bytes'])} "
                  f"{mib(r['argument'])} {mib(r['output'])} {mib(r['temp'])} {r['compile_s']:9.1f}")
        dp, fs = res["data parallel"], res["FSDP"]
        ratio = (fs["param_bytes"] + fs["opt_bytes"]) / (dp["param_bytes"] + dp["opt_bytes"])
        arg_ratio = fs["argument"] / dp["argument"] if dp["argument"] > 0 else float("nan")
        tot = lambda r: r["argument"] + r["temp"] + r["output"] - max(r["alias"], 0)
        print(f"FSDP / data parallel: parameter+optimizer bytes per device {ratio:.3f} (target <= {1 / 6:.3f}: "
              f"{'met' if ratio <= 1 / 6 else 'NOT met'}); compiled arguments {arg_ratio:.3f}; "
              f"arguments+temp+outputs-aliased {tot(fs) / max(tot(dp), 1):.3f}")
        if ratio > 1 / 6:
            status = 1
    return status


#: name -> (add_arguments, run). run returns the process exit code.
SUBCOMMANDS: dict[str, tuple[Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]] = {
    "data": (_add_data_args, run_data),
    "memory": (_add_memory_args, run_memory),
    "ae": (bench_train.add_args, bench_train.run_ae),
    "dyn": (bench_train.add_dyn_args, bench_train.run_dyn),
    "flops": (bench_train.add_flops_args, bench_train.run_flops),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tokpre.bench", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (add_args, _) in SUBCOMMANDS.items():
        add_args(sub.add_parser(name, help=(SUBCOMMANDS[name][1].__doc__ or "").strip().splitlines()[0]))
    args = parser.parse_args(argv)
    return SUBCOMMANDS[args.command][1](args)


if __name__ == "__main__":
    sys.exit(main())
