"""Pieces both stages share: dataset checks, models from config, per-static-key compiled steps, eval batches."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

from tokpre import sharding as shd
from tokpre.config import EMBEDDED_DATASETS
from tokpre.data import well


def ensure_datasets(config, names: Sequence[str]) -> None:
    """Checks every dataset exists; generates missing embedded ones (process 0) or explains how to get it."""
    base = Path(config.data.well_base_path)
    for name in names:
        split_dir = base / name / "data" / "train"
        if split_dir.is_dir() and any(split_dir.glob("*.h*5")):
            continue
        if name in EMBEDDED_DATASETS and config.data.generate_missing:
            if jax.process_index() == 0:
                from tokpre.data.generate import ensure_dataset
                overrides = {k: int(v) for k, v in config.data.generate.items() if int(v) > 0}
                print(f"tokpre: dataset {name} not found under {base}; generating it (embedded system)", flush=True)
                ensure_dataset(base, name, **overrides)
            _barrier(f"generate {name}")
            continue
        hint = (f"generate it with `python -m tokpre.data.generate --dataset={name} --base_path={base}`"
                if name in EMBEDDED_DATASETS else
                f"download it with The Well's tool (`the-well-download --base-path <dir> --dataset {name}`) and "
                f"set config key data.well_base_path to the `datasets` folder of that download")
        raise FileNotFoundError(f"dataset {name!r}: no HDF5 files in {split_dir.absolute()}; {hint}")


def _barrier(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices(name)


def periodic_of(boundary: np.ndarray) -> tuple[bool, ...]:
    """Static periodicity per spatial axis from a (D, 2) boundary-code array (both sides PERIODIC)."""
    b = np.asarray(boundary)
    return tuple(bool(lo == well.PERIODIC and hi == well.PERIODIC) for lo, hi in b)


def local_batch_size(global_batch: int, mesh: Mesh) -> int:
    """This process's share of the global batch; checks divisibility by processes and data-parallel size."""
    dp = shd.data_parallel_size(mesh)
    if global_batch % dp or global_batch % jax.process_count():
        raise ValueError(f"config key data.batch_size={global_batch} must be divisible by the data-parallel size "
                         f"{dp} (mesh axes data x fsdp) and by the {jax.process_count()} processes")
    return global_batch // jax.process_count()


def tokeniser_from_config(cfg) -> Any:
    from tokpre.models.tokeniser import Tokeniser
    t = cfg.model.tokeniser
    return Tokeniser(vocab_size=int(t.vocab_size), widths=tuple(t.widths), latent_channels=int(t.latent_channels),
                     spatial_factors=tuple(t.spatial_factors), temporal_factors=tuple(t.temporal_factors),
                     n_spatial_dims=int(t.n_spatial_dims), depth=int(t.get("depth", 0)),
                     decoder_depth=None if t.get("decoder_depth") is None else int(t.decoder_depth),
                     res_kernel_t=None if t.get("res_kernel_t") is None else int(t.res_kernel_t))


def all_compressions(cfg) -> list[tuple[int, int]]:
    t = cfg.model.tokeniser
    return [(int(a), int(b)) for a in t.temporal_factors for b in t.spatial_factors]


def batch_shardings(batch: dict, mesh: Mesh) -> dict:
    return {k: (shd.replicated(mesh) if k in ("field_ids", "boundary") else shd.batch_sharding(mesh, np.ndim(v)))
            for k, v in batch.items()}


class CompiledSteps:
    """One jitted function per static key (periodicity, compression, batch layout), compiled on first use.

    ``make(key) -> fn(state, batch)``; jitted with explicit in/out shardings for state and batch.
    """

    def __init__(self, make: Callable[[tuple], Callable], state_shardings: Any, mesh: Mesh, *,
                 donate: bool = True, out_shardings: Any = "state_and_none"):
        self._make = make
        self._state_sh = state_shardings
        self._mesh = mesh
        self._donate = donate
        self._out = out_shardings
        self._cache: dict[tuple, Callable] = {}

    def __call__(self, key: tuple, state: Any, batch: dict):
        layout = tuple(sorted((k, np.shape(v)) for k, v in batch.items()))
        full = (key, layout)
        fn = self._cache.get(full)
        if fn is None:
            b_sh = batch_shardings(batch, self._mesh)
            out = (self._state_sh, None) if self._out == "state_and_none" else self._out
            fn = jax.jit(self._make(key), in_shardings=(self._state_sh, b_sh), out_shardings=out,
                         donate_argnums=(0,) if self._donate else ())
            self._cache[full] = fn
        return fn(state, batch)


def eval_batch_count(n_windows_total: int, local_bs: int, requested: int) -> int:
    """Batches every process can supply (shards differ by at most one window), capped at ``requested``."""
    per_proc = n_windows_total // jax.process_count()
    n = per_proc // local_bs
    return min(n, requested) if requested > 0 else n


@functools.lru_cache(maxsize=32)
def normaliser(base_path: str, dataset: str, log_fields: tuple[str, ...]):
    """``pipeline.get_normaliser``, memoised so the jitted eval functions keyed on it compile once per run."""
    from tokpre.data import pipeline
    return pipeline.get_normaliser(base_path, dataset, log_fields)


def open_stage(name: str, workdir: Path, steps: int, report_name: str):
    """``(stage_dir, report_path, checkpointer, latest_step)``, or None when the stage already finished.

    A stage is finished when its last checkpoint reached ``steps`` and its end-of-stage report exists; it is
    then skipped, so rerunning a command resumes where it stopped.
    """
    from tokpre.checkpoint import StageCheckpointer
    stage_dir = Path(workdir) / name
    report = stage_dir / report_name
    ckpt = StageCheckpointer(stage_dir / "checkpoints")
    latest = ckpt.latest_step()
    if latest is not None and latest >= steps and report.exists():
        say(f"[{name}] finished at step {latest}; skipping (delete {stage_dir} to retrain)")
        ckpt.close()
        return None
    return stage_dir, report, ckpt, latest


def say(msg: str) -> None:
    if jax.process_index() == 0:
        print(msg, flush=True)
