"""Shared plumbing for the embedded physical systems: splits, file naming, writing, progress lines.

Every system produces, per parameter set ("group"), a batch of trajectories; ``write_group`` splits that batch
into distinct train/valid/test trajectories and writes one Well file per split with the same file name in each
split folder (as The Well does), e.g. ``data/train/gray_scott_reaction_diffusion_F_0.014_k_0.054.hdf5``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

SPLITS = ("train", "valid", "test")


def split_counts(n: int, splits: Sequence[float]) -> tuple[int, int, int]:
    """Number of (train, valid, test) trajectories for a group of ``n``, every split non-empty.

    valid/test get ``max(1, round(n * frac))``; train gets the rest. Needs ``n >= 3``.
    """
    if len(splits) != 3 or any(s < 0 for s in splits) or not math.isclose(sum(splits), 1.0, abs_tol=1e-6):
        raise ValueError(f"splits must be three non-negative fractions summing to 1, found {tuple(splits)}")
    if n < 3:
        raise ValueError(f"need at least 3 trajectories per parameter set (one per split), found {n}")
    n_valid = max(1, int(round(n * splits[1])))
    n_test = max(1, int(round(n * splits[2])))
    n_train = n - n_valid - n_test
    if n_train < 1:
        raise ValueError(f"splits {tuple(splits)} leave no train trajectory out of {n}")
    return n_train, n_valid, n_test


def per_group(n_trajectories: int, n_groups: int) -> int:
    """Trajectories per parameter set so that the total is ``n_trajectories`` (rounded up), at least 3."""
    if n_groups < 1:
        raise ValueError("need at least one parameter set")
    n = -(-n_trajectories // n_groups)
    if n < 3:
        raise ValueError(
            f"n_trajectories={n_trajectories} over {n_groups} parameter sets gives {n} per set; "
            f"need >= 3 per set (one per train/valid/test split), i.e. n_trajectories >= {3 * n_groups}"
        )
    return n


def fmt_param(v: float) -> str:
    """Compact, filename-safe number: 0.014 -> '0.014', 1e4 -> '10000', 1.4 -> '1.4'."""
    return f"{float(v):g}".replace("+", "")


def file_stem(dataset_name: str, params: Mapping[str, float], label: str | None = None) -> str:
    """``<dataset>[_<label>]_<p1>_<v1>_<p2>_<v2>`` as in The Well's file names."""
    parts = [dataset_name] + ([label] if label else [])
    for k, v in params.items():
        parts += [k, fmt_param(v)]
    return "_".join(parts)


def write_group(
    out_dataset_dir: str | Path,
    *,
    dataset_name: str,
    stem: str,
    splits: Sequence[float],
    coords: Mapping[str, np.ndarray],
    time_: np.ndarray,
    t0_fields: Mapping[str, np.ndarray],
    t1_fields: Mapping[str, np.ndarray],
    boundary_conditions: Mapping[str, str],
    params: Mapping[str, float],
) -> dict[str, Path]:
    """Write one parameter set's trajectories as train/valid/test files (distinct trajectories per split).

    ``t0_fields``: {name: (n, T, *N)}, ``t1_fields``: {name: (n, T, *N, D)}; the first n_train trajectories go to
    train, the next n_valid to valid, the rest to test (trajectories are i.i.d., so this is a random split).
    """
    from tokpre.data import well  # imported lazily: written concurrently by another module

    n = next(iter({**t0_fields, **t1_fields}.values())).shape[0]
    counts = split_counts(n, splits)
    out = {}
    start = 0
    for split, c in zip(SPLITS, counts):
        sl = slice(start, start + c)
        start += c
        path = Path(out_dataset_dir) / "data" / split / f"{stem}.hdf5"
        path.parent.mkdir(parents=True, exist_ok=True)
        for name, arr in {**t0_fields, **t1_fields}.items():
            if not np.all(np.isfinite(arr[sl])):
                raise FloatingPointError(f"{dataset_name}: non-finite values in field {name!r} for {path.name}")
        well.write_well_file(
            path,
            dataset_name=dataset_name,
            spatial_dims=list(coords.keys()),
            coords={k: np.asarray(v, np.float32) for k, v in coords.items()},
            time=np.asarray(time_, np.float32),
            t0_fields={k: np.asarray(v[sl], np.float32) for k, v in t0_fields.items()},
            t1_fields={k: np.asarray(v[sl], np.float32) for k, v in t1_fields.items()},
            boundary_conditions=dict(boundary_conditions),
            params={k: float(v) for k, v in params.items()},
        )
        out[split] = path
    return out


def finish(out_dataset_dir: str | Path) -> Path:
    """Compute ``stats.yaml`` over the train split; returns the dataset dir."""
    from tokpre.data import well

    well.write_stats(Path(out_dataset_dir))
    return Path(out_dataset_dir)


class Progress:
    """Console progress: ``[name] trajectories 16/48 (param ...) elapsed 12.3s``."""

    def __init__(self, name: str, total: int, log: Callable[[str], None] | None = print):
        self.name, self.total, self.done, self.log = name, total, 0, log
        self.t0 = time.perf_counter()

    def update(self, n: int, note: str = "") -> None:
        self.done += n
        if self.log is not None:
            el = time.perf_counter() - self.t0
            self.log(f"[{self.name}] trajectories {self.done}/{self.total} {note} elapsed {el:.1f}s".replace("  ", " "))


def group_seeds(seed: int, n_groups: int) -> list[np.random.Generator]:
    """Independent RNG streams per parameter set, derived deterministically from ``seed``."""
    return [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(n_groups)]
