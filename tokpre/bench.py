"""Throughput benchmarks: ``python -m tokpre.bench <subcommand> [flags]``.

Subcommands are registered in ``SUBCOMMANDS`` (name -> (add_arguments(parser), run(args) -> int)); add ``ae``,
``dyn``, ``memory`` by writing the two functions and adding one entry.

``data``: Grain input pipeline throughput (windows/s) on one Well dataset. It generates nothing; point
``--base_path`` at a folder holding ``<dataset>/data/train`` and ``<dataset>/stats.yaml``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable

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


#: name -> (add_arguments, run). run returns the process exit code.
SUBCOMMANDS: dict[str, tuple[Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]] = {
    "data": (_add_data_args, run_data),
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
