"""Grain input pipeline over The Well: windows -> (augment) -> normalise -> batch -> shard / shuffle / mix.

Public API
----------
``make_train_iterator(base_path, dataset_names, *, n_steps_input, n_steps_output, batch_size, seed, min_dt=1,
max_dt=1, flip=True, roll=True, log_fields=(), vocab=None, vocab_size=96, shard_index=None, shard_count=None,
num_workers=0, split="train", weights=None, read_threads=2, prefetch_batches=4) -> grain.DatasetIterator``
    Infinite iterator of training batches (epochs repeat, each epoch reshuffled). ``dataset_names`` is one name or a
    sequence; with several, whole batches alternate between datasets (``weights`` = proportions, default equal =
    round robin, a deterministic interleaving), each batch homogeneous with that dataset's ``field_ids``.
    The iterator is a plain Grain ``DatasetIterator``: ``get_state()`` is a JSON-serialisable dict and
    ``set_state(state)`` resumes the exact data order (augmentations included); for Orbax use
    ``iterator_checkpoint_args(it)`` / ``iterator_restore_args(it)``.
``make_eval_batches(base_path, dataset_name, *, split, n_steps_input, n_steps_output, batch_size, max_batches=None,
log_fields=(), vocab=None, vocab_size=96, dt=None, drop_last=True, shard_index=None, shard_count=None)
-> EvalBatches``
    Finite, deterministic (no shuffle, no augmentation, stride ``dt`` = 1 unless given) batches in Well window
    order (file -> trajectory -> start). ``max_batches`` below what the split fills reads windows evenly spaced
    over the whole split (``spread_window_indices``), not its first windows. ``drop_last=True`` (The Well's
    loaders) drops the trailing windows that do not fill a batch; ``drop_last=False`` keeps a smaller last batch.
    Sharded per process like training (each process gets every ``shard_count``-th window starting at
    ``shard_index``); callers average metrics across processes. ``len()`` is the number of batches; iterate it any
    number of times.
``get_normaliser(base_path, dataset_name, log_fields=()) -> Normaliser``
    Per-channel z-score from ``<base_path>/<dataset_name>/stats.yaml`` (train stats), std clipped at 1e-4 as The
    Well does. Channels in ``log_fields`` (config ``data.log_fields``; strictly positive fields such as density,
    pressure, energy) are log-transformed before the z-score; their mean/std are those of the log values,
    estimated from up to ``LOG_STATS_MAX_FRAMES`` evenly spaced frames of the train split and cached in
    ``<base_path>/<dataset_name>/stats_log.yaml`` (delete that file to recompute after the data changes).
``Normaliser.normalise(x)`` / ``Normaliser.denormalise(x)``: channel-last arrays ``(..., C)``, numpy or jax.
``WellWindowSource(split, n_steps_input, n_steps_output, min_dt=1, max_dt=1)``: Grain random-access source of
    windows (``__len__``, ``__getitem__`` -> dict of numpy at stride ``min_dt``; ``read(index, rng)`` draws ``dt``).
``flip_window`` / ``roll_window`` / ``component_axes``: the augmentations and their channel bookkeeping.

Batch layout (docs/contracts): ``input_fields (B, Ti, *N, C)`` float32 normalised, ``output_fields (B, To, *N, C)``
(absent when ``n_steps_output == 0``), ``field_ids (C,)`` int32, ``boundary (D, 2)`` int32 (unbatched),
``constant_fields (B, *N, Cc)`` (normalised when stats.yaml has them) and ``constant_scalars (B, Sc)`` (raw) when
the dataset has them; time-varying scalars pass through raw as ``input_scalars (B, Ti, S)`` /
``output_scalars (B, To, S)``.

``num_workers > 0`` uses Grain's ``mp_prefetch`` (spawned processes; batches identical to ``num_workers=0``); if
absl flags are unparsed (argparse or pytest callers) they are marked parsed, as Grain's workers read them.

Per-window order of operations (training): locate window (stride ``min_dt`` defines the index space, as The
Well) -> draw ``dt`` uniformly in ``[min_dt, min(max_dt, (T - t0 - 1) // (Ti + To - 1))]`` -> read -> random
axis flips (vector/tensor components negated, sign ``(-1)^(number of flipped component indices)``) and random
rolls on axes PERIODIC on both sides, both in physical units *before* normalisation (so a flip of a field with
non-zero mean stays exact) -> normalise. Geometric augmentations are skipped on non-cartesian grids (as The Well).
All randomness comes from Grain's per-record generator seeded by ``(seed, global record index)``, so a resumed
iterator reproduces the same windows and augmentations. Shuffling is a seeded global permutation per epoch
(different each epoch) of this process's shard (windows ``shard_index::shard_count``).
"""

from __future__ import annotations

import dataclasses
import itertools
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import grain
import numpy as np
import yaml

from tokpre.data import well
from tokpre.data.fields import DEFAULT_VOCAB_SIZE, FieldVocab

#: The Well's ZScoreNormalization clips std at this value.
MIN_STD = 1e-4
#: Frames of the train split sampled to estimate the stats of log-transformed fields.
LOG_STATS_MAX_FRAMES = 256
LOG_STATS_FILE = "stats_log.yaml"

# Keys of a window that are stacked along a new batch axis.
_BATCHED_KEYS = ("input_fields", "output_fields", "constant_fields", "constant_scalars", "input_scalars",
                 "output_scalars")


# ----------------------------------------------------------------------------------------------------------------
# Normalisation
# ----------------------------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True, eq=False)
class Normaliser:
    """Per-channel z-score on channel-last arrays, optionally of ``log(x)`` for selected channels.

    ``mean``/``std`` are ``(C,)`` float32 statistics of the (log-)values; ``std`` is already clipped at 1e-4.
    ``log_mask`` is ``(C,)`` bool: True where the channel is log-transformed before the z-score.
    """

    field_names: tuple[str, ...]
    mean: np.ndarray
    std: np.ndarray
    log_mask: np.ndarray

    def __post_init__(self):
        c = len(self.field_names)
        for name in ("mean", "std", "log_mask"):
            arr = getattr(self, name)
            if np.shape(arr) != (c,):
                raise ValueError(f"Normaliser.{name} must have shape ({c},) for channels {list(self.field_names)}, "
                                 f"found {np.shape(arr)}")
        object.__setattr__(self, "mean", np.asarray(self.mean, np.float32))
        object.__setattr__(self, "std", np.maximum(np.asarray(self.std, np.float32), np.float32(MIN_STD)))
        object.__setattr__(self, "log_mask", np.asarray(self.log_mask, bool))

    @property
    def log_fields(self) -> tuple[str, ...]:
        return tuple(n for n, m in zip(self.field_names, self.log_mask) if m)

    def _check_channels(self, x) -> None:
        if x.shape[-1] != len(self.field_names):
            raise ValueError(f"Normaliser for channels {list(self.field_names)} expects a trailing axis of "
                             f"{len(self.field_names)}, found shape {tuple(x.shape)}")

    def normalise(self, x):
        """``x: (..., C)`` physical values -> z-scores ``(..., C)`` (numpy in, numpy out; jax in, jax out).

        Log channels must be strictly positive: the numpy path raises otherwise; the jax path (traceable) gives NaN.
        """
        self._check_channels(x)
        if isinstance(x, (np.ndarray, np.generic)):
            x = np.asarray(x)
            dtype = x.dtype if np.issubdtype(x.dtype, np.floating) else np.float32
            if self.log_mask.any():
                logv = x[..., self.log_mask]
                if logv.size and not np.all(logv > 0):
                    bad = [n for n, m in zip(self.field_names, self.log_mask)
                           if m and not np.all(x[..., self.field_names.index(n)] > 0)]
                    raise ValueError(f"log-normalised channels {bad} (config data.log_fields) must be strictly "
                                     f"positive, found min {float(logv.min())}")
                x = x.astype(dtype, copy=True)
                x[..., self.log_mask] = np.log(x[..., self.log_mask])
            return ((x - self.mean.astype(dtype)) / self.std.astype(dtype)).astype(dtype, copy=False)
        import jax.numpy as jnp
        x = jnp.asarray(x)
        if self.log_mask.any():
            mask = jnp.asarray(self.log_mask)
            x = jnp.where(mask, jnp.log(jnp.where(mask, x, 1.0)), x)
        return (x - jnp.asarray(self.mean, x.dtype)) / jnp.asarray(self.std, x.dtype)

    def denormalise(self, x):
        """Exact inverse of ``normalise``: z-scores ``(..., C)`` -> physical values ``(..., C)``."""
        self._check_channels(x)
        if isinstance(x, (np.ndarray, np.generic)):
            x = np.asarray(x)
            dtype = x.dtype if np.issubdtype(x.dtype, np.floating) else np.float32
            y = x * self.std.astype(dtype) + self.mean.astype(dtype)
            if self.log_mask.any():
                y[..., self.log_mask] = np.exp(y[..., self.log_mask])
            return y.astype(dtype, copy=False)
        import jax.numpy as jnp
        x = jnp.asarray(x)
        y = x * jnp.asarray(self.std, x.dtype) + jnp.asarray(self.mean, x.dtype)
        if self.log_mask.any():
            mask = jnp.asarray(self.log_mask)
            y = jnp.where(mask, jnp.exp(jnp.where(mask, y, 0.0)), y)
        return y


def _log_stats(split: "well.WellSplit", dataset_dir: str, names: Sequence[str]) -> dict[str, tuple[float, float]]:
    """Mean/std of ``log(x)`` per channel in ``names``, cached in ``<dataset_dir>/stats_log.yaml``.

    Pools float64 moments over up to ``LOG_STATS_MAX_FRAMES`` frames spaced evenly over the split's
    (file, trajectory, time) frame index.
    """
    path = os.path.join(dataset_dir, LOG_STATS_FILE)
    cached: dict[str, Any] = {}
    if os.path.exists(path):
        with open(path) as f:
            cached = yaml.safe_load(f) or {}
        have = cached.get("mean", {}) or {}
        if all(n in have for n in names):
            return {n: (float(cached["mean"][n]), float(cached["std"][n])) for n in names}
    chans = [split.field_names.index(n) for n in names]
    n_frames = split.num_windows(1, 0, 1)
    if n_frames == 0:
        raise ValueError(f"cannot estimate log stats for {list(names)}: split {split.dataset_name} has no frames")
    take = np.unique(np.linspace(0, n_frames - 1, min(n_frames, LOG_STATS_MAX_FRAMES)).round().astype(np.int64))
    s1 = np.zeros(len(chans))
    s2 = np.zeros(len(chans))
    count = 0
    for idx in take:
        f, traj, t0 = split.locate(int(idx), 1, 0, 1)
        frame = split.read_window(f, traj, t0, 1, 0, 1)["input_fields"][..., chans].astype(np.float64)
        if not np.all(frame > 0):
            raise ValueError(f"config data.log_fields={list(names)}: {split.files[f].path} trajectory {traj} time "
                             f"{t0} has non-positive values (min {frame.min()}); log transform needs x > 0")
        logv = np.log(frame).reshape(-1, len(chans))
        s1 += logv.sum(0)
        s2 += (logv ** 2).sum(0)
        count += logv.shape[0]
    mean = s1 / count
    std = np.sqrt(np.maximum(s2 / count - mean ** 2, 0.0))
    out = {n: (float(m), float(s)) for n, m, s in zip(names, mean, std)}
    merged_mean = dict(cached.get("mean", {}) or {})
    merged_std = dict(cached.get("std", {}) or {})
    for n, (m, s) in out.items():
        merged_mean[n], merged_std[n] = m, s
    doc = {"mean": merged_mean, "std": merged_std, "n_frames": int(len(take)),
           "note": "mean/std of log(x) per channel over evenly spaced train frames (tokpre.data.pipeline)"}
    try:
        tmp = f"{path}.tmp{os.getpid()}"
        with open(tmp, "w") as f:
            yaml.safe_dump(doc, f)
        os.replace(tmp, path)
    except OSError:
        pass  # read-only dataset folder: recompute next time
    return out


def _normaliser_for(train_split: "well.WellSplit", dataset_dir: str, names: Sequence[str],
                    log_fields: Sequence[str]) -> Normaliser:
    stats = train_split.stats
    if stats is None:
        raise FileNotFoundError(f"{os.path.join(dataset_dir, 'stats.yaml')} not found; compute it with "
                                f"tokpre.data.well.write_stats({dataset_dir!r})")
    mean, std = well.channel_stats(stats, list(names), train_split.spatial_dims)
    mean = np.asarray(mean, np.float64).copy()
    std = np.asarray(std, np.float64).copy()
    mask = np.array([n in log_fields for n in names], bool)
    if mask.any():
        ls = _log_stats(train_split, dataset_dir, [n for n in names if n in log_fields])
        for i, n in enumerate(names):
            if n in ls:
                mean[i], std[i] = ls[n]
    return Normaliser(tuple(names), mean, std, mask)


def get_normaliser(base_path: str, dataset_name: str, log_fields: Sequence[str] = ()) -> Normaliser:
    """Normaliser of the time-varying channels of ``dataset_name`` from its train stats (see module docstring)."""
    split = well.WellSplit(base_path, dataset_name, "train")
    log_fields = tuple(log_fields)
    missing = [n for n in log_fields if n not in split.field_names]
    if missing:
        raise ValueError(f"config data.log_fields names {missing} that are not channels of {dataset_name} "
                         f"(channels: {list(split.field_names)})")
    return _normaliser_for(split, os.path.join(base_path, dataset_name), split.field_names, log_fields)


def _constant_normaliser(train_split: "well.WellSplit") -> Normaliser | None:
    """Z-score for constant fields when stats.yaml has their stats, else None (they stay raw)."""
    names = list(train_split.constant_field_names)
    if not names or train_split.stats is None:
        return None
    try:
        mean, std = well.channel_stats(train_split.stats, names, train_split.spatial_dims)
    except (KeyError, ValueError):
        return None
    return Normaliser(tuple(names), np.asarray(mean), np.asarray(std), np.zeros(len(names), bool))


# ----------------------------------------------------------------------------------------------------------------
# Augmentations
# ----------------------------------------------------------------------------------------------------------------

def component_axes(field_names: Sequence[str], spatial_dims: Sequence[str]) -> list[tuple[int, ...]]:
    """Spatial axes carried by each channel's tensor indices, from Well component-name suffixes.

    ``velocity_x`` -> ``(0,)``, ``D_xy`` -> ``(0, 1)``, ``density`` -> ``()`` for ``spatial_dims=("x", "y")``.
    Order-2 suffixes are tried before order-1 ones (``D_xy`` is ``D`` with indices x, y, not ``D_x`` with y).
    """
    dims = list(spatial_dims)
    out = []
    for name in field_names:
        found: tuple[int, ...] = ()
        for order in (2, 1):
            for combo in itertools.product(range(len(dims)), repeat=order):
                suffix = "_" + "".join(dims[i] for i in combo)
                if name.endswith(suffix) and len(name) > len(suffix):
                    found = combo
                    break
            if found:
                break
        out.append(found)
    return out


def _channel_component_axes(split: "well.WellSplit", constant: bool) -> list[tuple[int, ...]]:
    """Component axes per channel from the file's field specs (tensor order), else from name suffixes."""
    meta = split.files[0]
    specs = meta.constant_field_specs if constant else meta.field_specs
    names = list(split.constant_field_names if constant else split.field_names)
    axes: list[tuple[int, ...]] = []
    for spec in specs:
        axes.extend(itertools.product(range(split.n_spatial_dims), repeat=spec.order))
    if len(axes) == len(names):
        return [tuple(a) for a in axes]
    return component_axes(names, split.spatial_dims)


def flip_signs(comp_axes: Sequence[tuple[int, ...]], flipped: Sequence[int]) -> np.ndarray:
    """``(C,)`` float32 signs ``(-1)^(number of component indices on flipped axes)``."""
    flipped = set(flipped)
    return np.array([(-1.0) ** sum(a in flipped for a in ax) for ax in comp_axes], np.float32)


def flip_window(window: dict, flipped: Sequence[int], signs: np.ndarray,
                const_signs: np.ndarray | None = None) -> dict:
    """Reverse spatial axes ``flipped`` (indices into spatial dims) and apply per-channel ``signs``.

    ``input_fields/output_fields (T, *N, C)`` (spatial axes start at 1), ``constant_fields (*N, Cc)`` (at 0).
    """
    if not flipped:
        return window
    out = dict(window)
    for key in ("input_fields", "output_fields"):
        if key in out:
            out[key] = np.flip(out[key], axis=tuple(1 + a for a in flipped)) * signs
    if "constant_fields" in out:
        cf = np.flip(out["constant_fields"], axis=tuple(flipped))
        out["constant_fields"] = cf * const_signs if const_signs is not None else cf
    return out


def roll_window(window: dict, shifts: Mapping[int, int]) -> dict:
    """Roll spatial axis ``a`` by ``shifts[a]`` cells (periodic translation) in every field of the window."""
    shifts = {a: s for a, s in shifts.items() if s}
    if not shifts:
        return window
    axes = tuple(shifts)
    vals = tuple(shifts[a] for a in axes)
    out = dict(window)
    for key in ("input_fields", "output_fields"):
        if key in out:
            out[key] = np.roll(out[key], vals, axis=tuple(1 + a for a in axes))
    if "constant_fields" in out:
        out["constant_fields"] = np.roll(out["constant_fields"], vals, axis=axes)
    return out


# ----------------------------------------------------------------------------------------------------------------
# Source and per-record transform
# ----------------------------------------------------------------------------------------------------------------

class WellWindowSource:
    """Grain random-access source of windows over one ``WellSplit``.

    Index space: The Well's windows at stride ``min_dt`` (file -> trajectory -> start). ``__getitem__`` reads at
    ``min_dt``; ``read(index, rng)`` draws ``dt`` uniformly from ``[min_dt, min(max_dt, what fits)]`` (training).
    Items: ``input_fields (Ti, *N, C)``, ``output_fields (To, *N, C)`` (if To > 0), constant fields/scalars if any,
    raw physical values (float32). Picklable (reopens the split in a worker process).
    """

    def __init__(self, split: "well.WellSplit", n_steps_input: int, n_steps_output: int,
                 min_dt: int = 1, max_dt: int = 1):
        if n_steps_input < 1 or n_steps_output < 0:
            raise ValueError(f"n_steps_input must be >= 1 and n_steps_output >= 0, found {n_steps_input}, "
                             f"{n_steps_output}")
        if not 1 <= min_dt <= max_dt:
            raise ValueError(f"need 1 <= min_dt <= max_dt (config data.min_dt/max_dt), found {min_dt}, {max_dt}")
        self.split = split
        self.n_in, self.n_out = int(n_steps_input), int(n_steps_output)
        self.min_dt, self.max_dt = int(min_dt), int(max_dt)
        self._len = split.num_windows(self.n_in, self.n_out, self.min_dt)

    def __len__(self) -> int:
        return self._len

    def __repr__(self) -> str:
        return (f"WellWindowSource({self.split.dataset_name}, n_in={self.n_in}, n_out={self.n_out}, "
                f"dt=[{self.min_dt}, {self.max_dt}], windows={self._len})")

    def _check(self, index: int) -> int:
        index = int(index)
        if not 0 <= index < self._len:
            raise IndexError(f"window {index} out of range [0, {self._len}) for {self!r}")
        return index

    def __getitem__(self, index: int) -> dict:
        index = self._check(index)
        f, traj, t0 = self.split.locate(index, self.n_in, self.n_out, self.min_dt)
        return self.split.read_window(f, traj, t0, self.n_in, self.n_out, self.min_dt)

    def read(self, index: int, rng: np.random.Generator | None = None) -> dict:
        """Window ``index`` with a random stride when ``rng`` is given and ``max_dt > min_dt``."""
        index = self._check(index)
        f, traj, t0 = self.split.locate(index, self.n_in, self.n_out, self.min_dt)
        dt = self.min_dt
        span = self.n_in + self.n_out - 1
        if rng is not None and self.max_dt > self.min_dt and span > 0:
            n_steps = self.split.files[f].n_steps
            hi = min(self.max_dt, (n_steps - t0 - 1) // span)
            dt = int(rng.integers(self.min_dt, max(hi, self.min_dt) + 1))
        return self.split.read_window(f, traj, t0, self.n_in, self.n_out, dt)


class _WindowTransform:
    """Read, augment (train) and normalise one window; a picklable callable for Grain map / random_map."""

    def __init__(self, source: WellWindowSource, normaliser: Normaliser, const_normaliser: Normaliser | None,
                 flip: bool, roll: bool):
        self.source = source
        self.normaliser = normaliser
        self.const_normaliser = const_normaliser
        split = source.split
        cartesian = getattr(split.files[0], "grid_type", "cartesian") == "cartesian" if split.files else True
        self.flip = bool(flip) and cartesian
        self.roll_axes = tuple(i for i, p in enumerate(split.periodic) if p) if (roll and cartesian) else ()
        self.n_dims = split.n_spatial_dims
        self.resolution = tuple(split.resolution)
        self.comp_axes = _channel_component_axes(split, constant=False)
        self.const_comp_axes = _channel_component_axes(split, constant=True)

    def _finish(self, w: dict) -> dict:
        out = {"input_fields": self.normaliser.normalise(np.asarray(w["input_fields"], np.float32))}
        if "output_fields" in w:
            out["output_fields"] = self.normaliser.normalise(np.asarray(w["output_fields"], np.float32))
        if "constant_fields" in w:
            cf = np.asarray(w["constant_fields"], np.float32)
            out["constant_fields"] = self.const_normaliser.normalise(cf) if self.const_normaliser else cf
        for key in ("constant_scalars", "input_scalars", "output_scalars"):
            if key in w:
                out[key] = np.asarray(w[key], np.float32)
        return out

    def eval_record(self, index: int) -> dict:
        return self._finish(self.source[index])

    def train_record(self, index: int, rng: np.random.Generator) -> dict:
        w = self.source.read(index, rng)
        if self.flip:
            flipped = [a for a in range(self.n_dims) if rng.random() < 0.5]
            if flipped:
                w = flip_window(w, flipped, flip_signs(self.comp_axes, flipped),
                                flip_signs(self.const_comp_axes, flipped))
        if self.roll_axes:
            w = roll_window(w, {a: int(rng.integers(0, self.resolution[a])) for a in self.roll_axes})
        return self._finish(w)


class _Collate:
    """Stacks windows into a batch and adds the unbatched ``field_ids (C,)`` and ``boundary (D, 2)``."""

    def __init__(self, field_ids: np.ndarray, boundary: np.ndarray):
        self.field_ids = np.asarray(field_ids, np.int32)
        self.boundary = np.asarray(boundary, np.int32)

    def __call__(self, records: Sequence[dict]) -> dict:
        batch = {k: np.stack([r[k] for r in records]) for k in _BATCHED_KEYS if k in records[0]}
        batch["field_ids"] = self.field_ids
        batch["boundary"] = self.boundary
        return batch


# ----------------------------------------------------------------------------------------------------------------
# Datasets and iterators
# ----------------------------------------------------------------------------------------------------------------

def _resolve_shard(shard_index: int | None, shard_count: int | None) -> tuple[int, int]:
    if shard_index is None or shard_count is None:
        import jax
        shard_index = jax.process_index() if shard_index is None else shard_index
        shard_count = jax.process_count() if shard_count is None else shard_count
    if not 0 <= shard_index < shard_count:
        raise ValueError(f"need 0 <= shard_index < shard_count, found {shard_index}, {shard_count}")
    return int(shard_index), int(shard_count)


@dataclasses.dataclass
class _Prepared:
    transform: _WindowTransform
    collate: _Collate
    n_windows: int


def _prepare(base_path: str, name: str, split_name: str, n_in: int, n_out: int, min_dt: int, max_dt: int,
             flip: bool, roll: bool, log_fields: Sequence[str], vocab: FieldVocab, vocab_size: int,
             require_log_fields: bool) -> _Prepared:
    split = well.WellSplit(base_path, name, split_name)
    train = split if split_name == "train" else well.WellSplit(base_path, name, "train")
    if list(train.field_names) != list(split.field_names):
        raise ValueError(f"{name}: channels of split {split_name} {list(split.field_names)} differ from train "
                         f"{list(train.field_names)}")
    if require_log_fields:
        missing = [n for n in log_fields if n not in split.field_names]
        if missing:
            raise ValueError(f"config data.log_fields names {missing} that are not channels of {name} "
                             f"(channels: {list(split.field_names)})")
    ds_dir = os.path.join(base_path, name)
    norm = _normaliser_for(train, ds_dir, split.field_names, [n for n in log_fields if n in split.field_names])
    source = WellWindowSource(split, n_in, n_out, min_dt, max_dt)
    transform = _WindowTransform(source, norm, _constant_normaliser(train), flip, roll)
    collate = _Collate(vocab.ids(list(split.field_names), capacity=vocab_size), split.boundary)
    return _Prepared(transform, collate, len(source))


def _seed32(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) % 2**32 for p in parts]).generate_state(1)[0])


def train_dataset(base_path: str, dataset_names: str | Sequence[str], *, n_steps_input: int,
                  n_steps_output: int, batch_size: int, seed: int, min_dt: int = 1, max_dt: int = 1,
                  flip: bool = True, roll: bool = True, log_fields: Sequence[str] = (),
                  vocab: FieldVocab | None = None, vocab_size: int = DEFAULT_VOCAB_SIZE,
                  shard_index: int | None = None, shard_count: int | None = None, split: str = "train",
                  weights: Sequence[float] | None = None) -> grain.MapDataset:
    """Infinite ``grain.MapDataset`` of training batches (see ``make_train_iterator``); element i = batch i."""
    names = [dataset_names] if isinstance(dataset_names, str) else list(dataset_names)
    if not names:
        raise ValueError("dataset_names is empty (config data.datasets)")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1 (config data.batch_size), found {batch_size}")
    vocab = FieldVocab() if vocab is None else vocab
    shard_index, shard_count = _resolve_shard(shard_index, shard_count)
    log_fields = tuple(log_fields)
    parts = []
    all_channels: set[str] = set()
    for k, name in enumerate(names):
        prep = _prepare(base_path, name, split, n_steps_input, n_steps_output, min_dt, max_dt, flip, roll,
                        log_fields, vocab, vocab_size, require_log_fields=len(names) == 1)
        all_channels.update(prep.transform.source.split.field_names)
        n_shard = len(range(shard_index, prep.n_windows, shard_count))
        if n_shard < batch_size:
            raise ValueError(f"{name}/{split}: shard {shard_index}/{shard_count} has {n_shard} windows "
                             f"(of {prep.n_windows}) for n_steps_input={n_steps_input}, "
                             f"n_steps_output={n_steps_output}, min_dt={min_dt}: fewer than batch_size={batch_size}")
        ds = grain.MapDataset.range(prep.n_windows)[shard_index::shard_count]
        ds = ds.shuffle(seed=_seed32(seed, k, 0)).repeat(None)
        ds = ds.random_map(prep.transform.train_record, seed=_seed32(seed, k, 1))
        ds = ds.batch(batch_size, drop_remainder=True, batch_fn=prep.collate)
        parts.append(ds)
    unknown = [n for n in log_fields if n not in all_channels]
    if unknown:
        raise ValueError(f"config data.log_fields names {unknown} that are channels of none of {names}")
    if len(parts) == 1:
        return parts[0]
    if weights is not None and len(weights) != len(parts):
        raise ValueError(f"weights (config data.weights) has {len(weights)} entries for {len(parts)} datasets")
    return grain.MapDataset.mix(parts, weights)


def make_train_iterator(base_path: str, dataset_names: str | Sequence[str], *, n_steps_input: int,
                        n_steps_output: int, batch_size: int, seed: int, min_dt: int = 1, max_dt: int = 1,
                        flip: bool = True, roll: bool = True, log_fields: Sequence[str] = (),
                        vocab: FieldVocab | None = None, vocab_size: int = DEFAULT_VOCAB_SIZE,
                        shard_index: int | None = None, shard_count: int | None = None, num_workers: int = 0,
                        split: str = "train", weights: Sequence[float] | None = None, read_threads: int = 2,
                        prefetch_batches: int = 4) -> grain.DatasetIterator:
    """Infinite, checkpointable iterator of training batches (see module docstring).

    ``num_workers > 0`` reads in that many worker processes (Grain ``mp_prefetch``); ``read_threads`` /
    ``prefetch_batches`` size the in-process thread prefetch. The state (``get_state()``) is a JSON dict.
    """
    ds = train_dataset(base_path, dataset_names, n_steps_input=n_steps_input, n_steps_output=n_steps_output,
                       batch_size=batch_size, seed=seed, min_dt=min_dt, max_dt=max_dt, flip=flip, roll=roll,
                       log_fields=log_fields, vocab=vocab, vocab_size=vocab_size, shard_index=shard_index,
                       shard_count=shard_count, split=split, weights=weights)
    it_ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=max(read_threads, 0),
                                                 prefetch_buffer_size=max(prefetch_batches, 0)))
    if num_workers > 0:
        from absl import flags
        if not flags.FLAGS.is_parsed():  # Grain's worker pool reads its absl flags (argparse/pytest callers)
            flags.FLAGS.mark_as_parsed()
        it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))
    return iter(it_ds)


def iterator_checkpoint_args(it: grain.DatasetIterator):
    """Orbax save args for the data iterator, e.g. ``ocp.args.Composite(state=..., data=iterator_checkpoint_args(it))``.

    Uses Grain's Orbax handler (one ``process_<i>-of-<n>.json`` per process holding ``it.get_state()``).
    """
    from grain import checkpoint as gc
    return gc.CheckpointSave(it)


def iterator_restore_args(it: grain.DatasetIterator):
    """Orbax restore args: restoring sets ``it``'s state in place (the iterator must be built identically)."""
    from grain import checkpoint as gc
    return gc.CheckpointRestore(it)


class EvalBatches:
    """Finite deterministic batches for evaluation: ``len()``, ``[i]`` and re-iterable (see module docstring)."""

    def __init__(self, dataset: grain.MapDataset, n_windows: int, read_threads: int = 2, prefetch_batches: int = 2):
        self.dataset = dataset
        self.n_windows = n_windows  # windows in this shard, before batching
        self._read = grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=prefetch_batches)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < len(self):
            raise IndexError(f"eval batch {i} out of range [0, {len(self)})")
        return self.dataset[i]

    def __iter__(self) -> Iterator[dict]:
        if len(self) == 0:
            return iter(())
        return iter(self.dataset.to_iter_dataset(self._read))


def make_eval_batches(base_path: str, dataset_name: str, *, split: str, n_steps_input: int, n_steps_output: int,
                      batch_size: int, max_batches: int | None = None, log_fields: Sequence[str] = (),
                      vocab: FieldVocab | None = None, vocab_size: int = DEFAULT_VOCAB_SIZE, dt: int | None = None,
                      drop_last: bool = True, shard_index: int | None = None,
                      shard_count: int | None = None) -> EvalBatches:
    """Deterministic, un-augmented batches of ``split`` in Well window order (see module docstring)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, found {batch_size}")
    vocab = FieldVocab() if vocab is None else vocab
    shard_index, shard_count = _resolve_shard(shard_index, shard_count)
    dt = 1 if dt is None else int(dt)
    prep = _prepare(base_path, dataset_name, split, n_steps_input, n_steps_output, dt, dt, False, False,
                    tuple(log_fields), vocab, vocab_size, require_log_fields=True)
    indices = spread_window_indices(prep.n_windows, max_batches, batch_size, shard_count)
    ds = grain.MapDataset.source(indices)[shard_index::shard_count]
    n_windows = len(ds)
    ds = ds.map(prep.transform.eval_record).batch(batch_size, drop_remainder=drop_last, batch_fn=prep.collate)
    if max_batches is not None:
        ds = ds[: max(int(max_batches), 0)]
    return EvalBatches(ds, n_windows)


def spread_window_indices(n_windows: int, max_batches: int | None, batch_size: int, shard_count: int) -> list[int]:
    """Window indices an evaluation reads: all of them, or, when ``max_batches`` batches per process cannot hold
    every window, ``max_batches * batch_size * shard_count`` windows evenly spaced over the split (in Well order),
    so a capped evaluation samples every file and trajectory instead of the first trajectory's windows."""
    if max_batches is None or max_batches < 0:
        return list(range(n_windows))
    want = int(max_batches) * int(batch_size) * int(shard_count)
    if want <= 0 or want >= n_windows:
        return list(range(n_windows))
    return [int(i) for i in (np.arange(want, dtype=np.int64) * n_windows) // want]

