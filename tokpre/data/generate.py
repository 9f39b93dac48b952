"""Generate the embedded Well-format datasets.

    python -m tokpre.data.generate --dataset=gray_scott_reaction_diffusion [--base_path=data/datasets]
        [--resolution=64] [--n_trajectories=N] [--n_steps=T] [--dt_save=DT] [--seed=0] [--force]
    python -m tokpre.data.generate --dataset=all

Writes ``<base_path>/<name>/data/{train,valid,test}/*.hdf5`` and ``<base_path>/<name>/stats.yaml``. Generation
is atomic: everything is written into ``<base_path>/<name>.partial-<pid>`` and renamed to ``<base_path>/<name>``
only when complete, so an interrupted run never leaves a half-written dataset (its partial dir is removed by
the next run).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

from tokpre.data.systems import SYSTEMS, get_system

DEFAULT_BASE_PATH = "data/datasets"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale_partials(base: Path, name: str, log: Callable[[str], None] | None) -> None:
    """Delete ``<base>/<name>.partial-<pid>`` dirs left by dead processes (or by this pid)."""
    for p in base.glob(f"{name}.partial-*"):
        try:
            pid = int(p.name.rsplit("-", 1)[1])
        except ValueError:
            pid = -1
        if pid == os.getpid() or pid < 0 or not _pid_alive(pid):
            if log:
                log(f"[{name}] removing stale partial dataset {p}")
            shutil.rmtree(p, ignore_errors=True)


def generate_dataset(base_path: str | os.PathLike, name: str, *, force: bool = False,
                     log: Callable[[str], None] | None = print, **overrides) -> Path:
    """Generate dataset ``name`` into ``<base_path>/<name>`` atomically; returns that path.

    ``overrides`` (resolution, n_trajectories, n_steps, dt_save, seed, splits, or system-specific keys such as
    ``gammas``) replace the system defaults. An existing dataset is kept unless ``force``.
    """
    system = get_system(name)
    base = Path(base_path)
    base.mkdir(parents=True, exist_ok=True)
    final = base / name
    _remove_stale_partials(base, name, log)
    if final.exists() and not force:
        if log:
            log(f"[{name}] exists at {final}; skipping (use --force to regenerate)")
        return final
    kwargs = {**system.defaults, **{k: v for k, v in overrides.items() if v is not None}}
    partial = base / f"{name}.partial-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    t0 = time.perf_counter()
    if log:
        log(f"[{name}] generating into {partial} with {kwargs}")
    try:
        system.generate(partial, log=log, **kwargs)
        if final.exists():  # --force: move the old one aside first (os.replace cannot overwrite a non-empty dir)
            old = base / f"{name}.old-{os.getpid()}"
            os.replace(final, old)
            os.replace(partial, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(partial, final)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    if log:
        log(f"[{name}] done: {final} in {time.perf_counter() - t0:.1f}s")
    return final


def ensure_dataset(base_path: str | os.PathLike, name: str, log: Callable[[str], None] | None = print,
                   **overrides) -> Path:
    """Return ``<base_path>/<name>``, generating it first (and saying so) if it does not exist yet."""
    final = Path(base_path) / name
    if final.is_dir() and (final / "stats.yaml").exists():
        return final
    if log:
        log(f"[{name}] dataset not found at {final}; generating it")
    return generate_dataset(base_path, name, force=final.exists(), log=log, **overrides)


def build_parser() -> argparse.ArgumentParser:
    """The CLI's argument parser."""
    p = argparse.ArgumentParser(prog="python -m tokpre.data.generate", description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", required=True, help=f"one of {sorted(SYSTEMS)} or 'all'")
    p.add_argument("--base_path", default=DEFAULT_BASE_PATH, help="folder holding <dataset>/data/<split>")
    p.add_argument("--resolution", type=int, default=None, help="grid points per side (default 64)")
    p.add_argument("--n_trajectories", type=int, default=None, help="total trajectories over all parameter sets")
    p.add_argument("--n_steps", type=int, default=None, help="saved time steps per trajectory")
    p.add_argument("--dt_save", type=float, default=None, help="time between saved steps")
    p.add_argument("--seed", type=int, default=None, help="random seed (default 0)")
    p.add_argument("--force", action="store_true", help="regenerate even if the dataset exists")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point."""
    args = build_parser().parse_args(argv)
    names = sorted(SYSTEMS) if args.dataset == "all" else [args.dataset]
    for n in names:
        if n not in SYSTEMS:
            print(f"error: unknown --dataset={n!r}; known: {sorted(SYSTEMS)} or 'all'", file=sys.stderr)
            return 2
    overrides = dict(resolution=args.resolution, n_trajectories=args.n_trajectories, n_steps=args.n_steps,
                     dt_save=args.dt_save, seed=args.seed)
    for n in names:
        generate_dataset(args.base_path, n, force=args.force, **overrides)
    return 0


if __name__ == "__main__":
    sys.exit(main())
