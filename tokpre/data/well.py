"""The Well HDF5 format: reader, writer, validator and normalisation statistics.

Implements the on-disk schema of The Well (``PolymathicAI/the_well``; summarised in
``shared/reference/the_well.md`` section 1) without depending on its package:

- :func:`write_well_file` writes one file with every attribute The Well's checker and reader need.
- :func:`read_file_metadata` / :func:`validate_file` read and check one file's schema and return a :class:`FileMeta`.
- :class:`WellSplit` is a lazily read split folder (``<base>/<dataset>/data/<split>/*.hdf5``): window counting in
  The Well's order (file -> trajectory -> start time), window and whole-trajectory reads that slice only what they
  need, per-process cached file handles.
- :func:`compute_stats` / :func:`write_stats` / :func:`load_stats` produce and read ``stats.yaml`` exactly like
  The Well (per core field, per component, pooled in float64), :func:`channel_stats` maps them to channel order.

Arrays are channel-last like The Well: a window is ``(T, *N, C)`` with channels ordered t0 fields, then t1 fields
(components ``f"{field}_{dim}"``), then t2 fields (``f"{field}_{dim_i}{dim_j}"``, row-major); fields that do not vary
in time (``time_varying=False``) are kept apart as ``constant_fields (*N, Cc)``.
"""

from __future__ import annotations

import dataclasses
import glob
import itertools
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import h5py
import numpy as np
import yaml

# Boundary codes, as The Well's ``BoundaryCondition`` enum (padding return type).
WALL, OPEN, PERIODIC = 0, 1, 2
BC_CODES: dict[str, int] = {"WALL": WALL, "OPEN": OPEN, "PERIODIC": PERIODIC}
BC_NAMES: dict[int, str] = {v: k for k, v in BC_CODES.items()}

FIELD_GROUPS = ("t0_fields", "t1_fields", "t2_fields")
STATS_KEYS = ("mean", "std", "rms", "mean_delta", "std_delta", "rms_delta")
_H5_SUFFIXES = ("*.hdf5", "*.h5")

_HOW_TO_GET_DATA = (
    "Generate an embedded system with `python -m tokpre.data.generate --dataset=NAME`, or download a Well "
    "dataset with The Well's tool: `the-well-download --base-path BASE --dataset NAME --split SPLIT` "
    "(pip install the_well), where BASE is the folder holding <dataset>/data/<split>/."
)


class WellFormatError(ValueError):
    """A file or folder does not follow The Well's format; the message names the file, object, expected, found."""


# --------------------------------------------------------------------------------------------------------------
# Metadata records
# --------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class FieldSpec:
    """One field dataset of a ``t{order}_fields`` group, as stored."""

    name: str  # core name, e.g. "velocity"
    order: int  # tensor order 0, 1 or 2
    sample_varying: bool
    time_varying: bool
    dim_varying: tuple[bool, ...]  # length D
    shape: tuple[int, ...]  # stored shape
    components: tuple[str, ...]  # flattened channel names, e.g. ("velocity_x", "velocity_y")

    @property
    def group(self) -> str:
        return FIELD_GROUPS[self.order]

    @property
    def h5path(self) -> str:
        return f"/{self.group}/{self.name}"


@dataclasses.dataclass(frozen=True, eq=False)
class ScalarSpec:
    """One dataset of the ``/scalars`` group."""

    name: str
    sample_varying: bool
    time_varying: bool
    shape: tuple[int, ...]

    @property
    def h5path(self) -> str:
        return f"/scalars/{self.name}"


@dataclasses.dataclass(frozen=True, eq=False)
class FileMeta:
    """Schema of one Well file (everything but the field data)."""

    path: str
    dataset_name: str
    grid_type: str
    n_spatial_dims: int
    spatial_dims: tuple[str, ...]
    resolution: tuple[int, ...]  # (N_1, ..., N_D) in spatial_dims order
    n_trajectories: int
    n_steps: int
    field_names: tuple[str, ...]  # flattened time-varying channel names, Well order
    constant_field_names: tuple[str, ...]  # flattened constant (time_varying=False) channel names
    scalar_names: tuple[str, ...]  # time-varying scalars
    constant_scalar_names: tuple[str, ...]
    boundary: np.ndarray  # (D, 2) int32, codes WALL/OPEN/PERIODIC per [low, high] side
    params: dict[str, float | str]  # simulation parameters (root attributes)
    field_specs: tuple[FieldSpec, ...] = ()  # time-varying fields in channel order
    constant_field_specs: tuple[FieldSpec, ...] = ()
    scalar_specs: tuple[ScalarSpec, ...] = ()  # time-varying scalars
    constant_scalar_specs: tuple[ScalarSpec, ...] = ()
    time_sample_varying: bool = False

    @property
    def core_field_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.field_specs)

    @property
    def core_constant_field_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.constant_field_specs)


# --------------------------------------------------------------------------------------------------------------
# Attribute decoding (h5py gives str, bytes, numpy scalars or arrays depending on how a file was written)
# --------------------------------------------------------------------------------------------------------------


def _to_str(v: Any) -> str:
    if isinstance(v, np.ndarray) and v.ndim == 0:
        v = v.item()
    if isinstance(v, np.ndarray) and v.size == 1:
        v = v.reshape(()).item()
    if isinstance(v, (bytes, np.bytes_)):
        return bytes(v).decode("utf-8")
    if isinstance(v, (str, np.str_)):
        return str(v)
    raise TypeError(f"not a string: {v!r}")


def _to_str_list(v: Any) -> list[str]:
    if isinstance(v, (str, bytes, np.str_, np.bytes_)):
        return [_to_str(v)]
    if isinstance(v, np.ndarray):
        return [_to_str(x) for x in v.ravel().tolist()]
    if isinstance(v, (list, tuple)):
        return [_to_str(x) for x in v]
    raise TypeError(f"not a list of strings: {v!r}")


def _to_bool(v: Any) -> bool:
    if isinstance(v, np.ndarray):
        if v.size != 1:
            raise TypeError(f"not a single bool: {v!r}")
        v = v.reshape(()).item()
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, (int, np.integer)) and int(v) in (0, 1):
        return bool(v)
    if isinstance(v, (str, bytes, np.str_, np.bytes_)) and _to_str(v).lower() in ("true", "false"):
        return _to_str(v).lower() == "true"
    raise TypeError(f"not a bool: {v!r}")


def _component_names(field: str, order: int, spatial_dims: Sequence[str]) -> tuple[str, ...]:
    """``velocity, 1, (x, y) -> (velocity_x, velocity_y)``; order 2 gives all D*D row-major entries."""
    if order == 0:
        return (field,)
    return tuple(f"{field}_{''.join(c)}" for c in itertools.product(spatial_dims, repeat=order))


class _Reader:
    """Helpers that turn every h5py lookup failure into a WellFormatError naming file, object, expected, found."""

    def __init__(self, f: h5py.File, path: str):
        self.f = f
        self.path = path

    def err(self, obj: str, expected: str, found: str) -> WellFormatError:
        return WellFormatError(f"{self.path}: {obj}: expected {expected}, found {found}")

    def node(self, obj: str, kind: type, what: str):
        try:
            node = self.f[obj]
        except KeyError:
            raise self.err(obj, what, "nothing (missing)") from None
        if not isinstance(node, kind):
            raise self.err(obj, what, f"a {type(node).__name__}")
        return node

    def group(self, obj: str) -> h5py.Group:
        return self.node(obj, h5py.Group, "an HDF5 group")

    def dataset(self, obj: str, what: str = "an HDF5 dataset") -> h5py.Dataset:
        return self.node(obj, h5py.Dataset, what)

    def attr(self, node, name: str, expected: str):
        obj = f"{node.name}.attrs['{name}']" if node.name != "/" else f"/.attrs['{name}']"
        try:
            return node.attrs[name]
        except KeyError:
            raise self.err(obj, expected, "no such attribute") from None
        except OSError as e:  # unreadable attribute (e.g. an unsupported type)
            raise self.err(obj, expected, f"an unreadable attribute ({e})") from None

    def _typed(self, node, name, expected, fn):
        v = self.attr(node, name, expected)
        try:
            return fn(v)
        except (TypeError, ValueError):
            obj = f"{node.name}.attrs['{name}']" if node.name != "/" else f"/.attrs['{name}']"
            raise self.err(obj, expected, f"{v!r} ({type(v).__name__})") from None

    def str_attr(self, node, name) -> str:
        return self._typed(node, name, "a string", _to_str)

    def str_list_attr(self, node, name) -> list[str]:
        return self._typed(node, name, "a list of strings", _to_str_list)

    def bool_attr(self, node, name) -> bool:
        return self._typed(node, name, "a bool", _to_bool)

    def int_attr(self, node, name) -> int:
        def fn(v):
            if isinstance(v, np.ndarray) and v.size == 1:
                v = v.reshape(()).item()
            if isinstance(v, (bool, np.bool_)) or not float(v).is_integer():
                raise TypeError
            return int(v)

        return self._typed(node, name, "an integer", fn)


def _open_h5(path: str) -> h5py.File:
    if not os.path.isfile(path):
        raise WellFormatError(f"{path}: expected an HDF5 file, found no such file")
    try:
        return h5py.File(path, "r")
    except OSError as e:
        raise WellFormatError(f"{path}: /: expected a readable HDF5 file, found an unreadable file ({e})") from None


def _decode_boundary(r: _Reader, spatial_dims: Sequence[str], resolution: Sequence[int]) -> np.ndarray:
    """(D, 2) int32 codes exactly as The Well's ``_padding_bcs``: OPEN by default; per BC subgroup (HDF5 key order)
    and associated dim, a side takes the subgroup's code if its mask at index 0 / -1 along that dim passes ``min``
    (WALL: the whole edge must be masked) or ``max`` (OPEN, PERIODIC: any masked point counts)."""
    dim_index = {d: i for i, d in enumerate(spatial_dims)}
    out = np.full((len(spatial_dims), 2), OPEN, dtype=np.int32)
    bcs = r.group("/boundary_conditions")
    for key in list(bcs.keys()):
        g = r.group(f"/boundary_conditions/{key}")
        bc_type = r.str_attr(g, "bc_type").upper()
        if bc_type not in BC_CODES:
            raise r.err(f"{g.name}.attrs['bc_type']", f"one of {sorted(BC_CODES)}", repr(bc_type))
        dims = r.str_list_attr(g, "associated_dims")
        if len(dims) == 1 and dims[0] not in dim_index and all(c in dim_index for c in dims[0]):
            dims = list(dims[0])  # a plain string "xy" is iterated character-wise by The Well's reader
        for d in dims:
            if d not in dim_index:
                raise r.err(f"{g.name}.attrs['associated_dims']", f"names from spatial_dims {list(spatial_dims)}",
                            repr(d))
        sv = r.bool_attr(g, "sample_varying")
        tv = r.bool_attr(g, "time_varying")
        r.attr(g, "associated_fields", "a list of strings")
        mds = r.dataset(f"{g.name}/mask", "a bool mask dataset")
        lead = int(sv) + int(tv)
        want = tuple(resolution[dim_index[d]] for d in dims)
        if mds.ndim != lead + len(dims) or tuple(mds.shape[lead:]) != want:
            raise r.err(f"{g.name}/mask", f"trailing shape {want} (sizes of associated_dims {dims})",
                        f"shape {tuple(mds.shape)}")
        mask = np.asarray(mds[()]).astype(bool)
        agg = np.all if bc_type == "WALL" else np.any
        for i, d in enumerate(dims):
            for side, pos in ((0, 0), (1, -1)):
                idx = (slice(None),) * lead + tuple(pos if j == i else slice(None) for j in range(len(dims)))
                edge = mask[idx]
                if edge.size and agg(edge):
                    out[dim_index[d], side] = BC_CODES[bc_type]
    return out


def _field_spec(r: _Reader, order: int, name: str, n_traj: int, n_steps: int,
                spatial_dims: Sequence[str], resolution: Sequence[int]) -> FieldSpec:
    obj = f"/{FIELD_GROUPS[order]}/{name}"
    ds = r.dataset(obj, f"a field dataset (listed in /{FIELD_GROUPS[order]}.attrs['field_names'])")
    D = len(spatial_dims)
    sv = r.bool_attr(ds, "sample_varying")
    tv = r.bool_attr(ds, "time_varying")
    try:
        dv_raw = r.attr(ds, "dim_varying", f"a bool array of length {D}")
        dv = tuple(_to_bool(x) for x in np.atleast_1d(np.asarray(dv_raw)).tolist())
    except TypeError:
        raise r.err(f"{obj}.attrs['dim_varying']", f"a bool array of length {D}", repr(dv_raw)) from None
    if len(dv) != D:
        raise r.err(f"{obj}.attrs['dim_varying']", f"a bool array of length n_spatial_dims={D}", repr(dv_raw))
    if ds.dtype.kind != "f":
        raise r.err(obj, "a floating-point dtype (float32)", f"dtype {ds.dtype}")
    lead = ([n_traj] if sv else []) + ([n_steps] if tv else [])
    compact = tuple(lead + [n for n, v in zip(resolution, dv) if v] + [D] * order)
    full = tuple(lead + [n if v else 1 for n, v in zip(resolution, dv)] + [D] * order)
    if tuple(ds.shape) not in (compact, full):
        axes = (["n_trajectories"] if sv else []) + (["time"] if tv else []) + \
            [d for d, v in zip(spatial_dims, dv) if v] + ["D"] * order
        raise r.err(obj, f"shape {compact} ({', '.join(axes)})", f"shape {tuple(ds.shape)}")
    return FieldSpec(name=name, order=order, sample_varying=sv, time_varying=tv, dim_varying=dv,
                     shape=tuple(ds.shape), components=_component_names(name, order, spatial_dims))


def _read_meta(f: h5py.File, path: str) -> FileMeta:
    r = _Reader(f, path)
    root = f["/"]
    dataset_name = r.str_attr(root, "dataset_name")
    grid_type = r.str_attr(root, "grid_type")
    D = r.int_attr(root, "n_spatial_dims")
    n_traj = r.int_attr(root, "n_trajectories")
    if D < 1:
        raise r.err("/.attrs['n_spatial_dims']", "a positive integer", str(D))
    if n_traj < 1:
        raise r.err("/.attrs['n_trajectories']", "a positive integer", str(n_traj))
    param_names = r.str_list_attr(root, "simulation_parameters")
    params: dict[str, float | str] = {}
    for p in param_names:
        v = r.attr(root, p, "a simulation parameter value")
        try:
            params[p] = float(np.asarray(v).reshape(()))  # numeric parameters (the norm)
        except (TypeError, ValueError):
            params[p] = r.str_attr(root, p)  # a named setting, e.g. an initial-condition label

    dims = r.group("/dimensions")
    spatial_dims = tuple(r.str_list_attr(dims, "spatial_dims"))
    if len(spatial_dims) != D:
        raise r.err("/dimensions.attrs['spatial_dims']", f"{D} names (n_spatial_dims={D})",
                    f"{len(spatial_dims)} names {list(spatial_dims)}")
    time = r.dataset("/dimensions/time", "a time dataset (T,) or (n_trajectories, T)")
    time_sv = r.bool_attr(time, "sample_varying")  # (time_varying is checked by validate_file only, as The Well)
    if time.ndim != 1 + int(time_sv) or (time_sv and time.shape[0] != n_traj):
        want = f"({n_traj}, T)" if time_sv else "(T,)"
        raise r.err("/dimensions/time", f"shape {want} (sample_varying={time_sv})", f"shape {tuple(time.shape)}")
    n_steps = int(time.shape[-1])
    if n_steps < 1:
        raise r.err("/dimensions/time", "at least one time step", f"shape {tuple(time.shape)}")
    resolution = []
    for d in spatial_dims:
        c = r.dataset(f"/dimensions/{d}", f"a coordinate dataset for spatial dim '{d}'")
        r.bool_attr(c, "sample_varying")
        r.bool_attr(c, "time_varying")
        if c.ndim < 1:
            raise r.err(f"/dimensions/{d}", "a 1-D coordinate array (N,)", f"shape {tuple(c.shape)}")
        resolution.append(int(c.shape[-1]))
    resolution = tuple(resolution)

    field_specs, const_specs = [], []
    for order, gname in enumerate(FIELD_GROUPS):
        g = r.group(f"/{gname}")
        for name in r.str_list_attr(g, "field_names"):
            s = _field_spec(r, order, name, n_traj, n_steps, spatial_dims, resolution)
            (field_specs if s.time_varying else const_specs).append(s)

    sg = r.group("/scalars")
    scal, const_scal = [], []
    for name in r.str_list_attr(sg, "field_names"):
        obj = f"/scalars/{name}"
        ds = r.dataset(obj, "a scalar dataset (listed in /scalars.attrs['field_names'])")
        sv = r.bool_attr(ds, "sample_varying")
        tv = r.bool_attr(ds, "time_varying")
        want = tuple(([n_traj] if sv else []) + ([n_steps] if tv else []))
        if tuple(ds.shape) not in (want, want + (1,)):
            raise r.err(obj, f"shape {want} (sample_varying={sv}, time_varying={tv})", f"shape {tuple(ds.shape)}")
        if ds.dtype.kind not in "fiu":
            raise r.err(obj, "a numeric dtype (float32)", f"dtype {ds.dtype}")
        (scal if tv else const_scal).append(ScalarSpec(name, sv, tv, tuple(ds.shape)))

    boundary = _decode_boundary(r, spatial_dims, resolution)
    return FileMeta(
        path=path, dataset_name=dataset_name, grid_type=grid_type, n_spatial_dims=D, spatial_dims=spatial_dims,
        resolution=resolution, n_trajectories=n_traj, n_steps=n_steps,
        field_names=tuple(c for s in field_specs for c in s.components),
        constant_field_names=tuple(c for s in const_specs for c in s.components),
        scalar_names=tuple(s.name for s in scal), constant_scalar_names=tuple(s.name for s in const_scal),
        boundary=boundary, params=params, field_specs=tuple(field_specs), constant_field_specs=tuple(const_specs),
        scalar_specs=tuple(scal), constant_scalar_specs=tuple(const_scal), time_sample_varying=time_sv,
    )


def read_file_metadata(path: str | os.PathLike) -> FileMeta:
    """Reads and checks the schema of one Well file (attributes, groups, shapes, dtypes; no field data).

    Raises WellFormatError naming the file, the HDF5 object, what was expected and what was found.
    """
    path = os.fspath(path)
    with _open_h5(path) as f:
        try:
            return _read_meta(f, path)
        except WellFormatError:
            raise
        except (KeyError, OSError, TypeError, ValueError) as e:  # safety net: never leak a bare h5py error
            raise WellFormatError(f"{path}: /: expected a Well file, found an unreadable structure "
                                  f"({type(e).__name__}: {e})") from None


def _check_finite_chunks(r: _Reader, obj: str, ds: h5py.Dataset, sample_varying: bool) -> None:
    if sample_varying and ds.ndim > 0:
        for b in range(ds.shape[0]):
            x = np.asarray(ds[b])
            if not np.all(np.isfinite(x)):
                raise r.err(obj, "finite values", f"NaN/Inf in trajectory {b}")
    else:
        x = np.asarray(ds[()])
        if not np.all(np.isfinite(x)):
            raise r.err(obj, "finite values", "NaN/Inf")


def validate_file(path: str | os.PathLike) -> FileMeta:
    """The full checker (the_well.md 1.6; the logic of The Well's ``check_thewell_formatting.py`` and more).

    On top of :func:`read_file_metadata`: every simulation parameter is also a ``/scalars`` dataset, coordinates are
    1-D with both varying attributes False, order-2 fields carry ``symmetric``/``antisymmetric``, boundary subgroups
    carry ``associated_fields``, and every field, scalar, coordinate and time value is finite.
    """
    path = os.fspath(path)
    meta = read_file_metadata(path)
    with _open_h5(path) as f:
        r = _Reader(f, path)
        try:
            scal_names = set(r.str_list_attr(f["/scalars"], "field_names"))
            for p in meta.params:
                if p not in scal_names:
                    raise r.err("/scalars.attrs['field_names']",
                                f"simulation parameter '{p}' listed (and a /scalars/{p} dataset)",
                                f"{sorted(scal_names)}")
            for d in meta.spatial_dims:
                c = f[f"/dimensions/{d}"]
                if c.ndim != 1 or r.bool_attr(c, "sample_varying") or r.bool_attr(c, "time_varying"):
                    raise r.err(f"/dimensions/{d}", "a (N,) coordinate with sample_varying=False, "
                                "time_varying=False", f"shape {tuple(c.shape)}, sample_varying="
                                f"{r.bool_attr(c, 'sample_varying')}, time_varying={r.bool_attr(c, 'time_varying')}")
                if c.dtype.kind != "f":
                    raise r.err(f"/dimensions/{d}", "a floating-point dtype (float32)", f"dtype {c.dtype}")
                _check_finite_chunks(r, f"/dimensions/{d}", c, False)
            t = f["/dimensions/time"]
            r.bool_attr(t, "time_varying")
            if t.dtype.kind != "f":
                raise r.err("/dimensions/time", "a floating-point dtype (float32)", f"dtype {t.dtype}")
            _check_finite_chunks(r, "/dimensions/time", t, False)
            for s in meta.field_specs + meta.constant_field_specs:
                ds = f[s.h5path]
                if s.order == 2:
                    for a in ("symmetric", "antisymmetric"):
                        r.bool_attr(ds, a)
                _check_finite_chunks(r, s.h5path, ds, s.sample_varying)
            for s in meta.scalar_specs + meta.constant_scalar_specs:
                _check_finite_chunks(r, s.h5path, f[s.h5path], s.sample_varying)
        except WellFormatError:
            raise
        except (KeyError, OSError, TypeError, ValueError) as e:
            raise WellFormatError(f"{path}: /: expected a Well file, found an unreadable structure "
                                  f"({type(e).__name__}: {e})") from None
    return meta


# --------------------------------------------------------------------------------------------------------------
# Writer
# --------------------------------------------------------------------------------------------------------------


def _str_attr_array(names: Sequence[str]) -> np.ndarray:
    return np.array([str(n) for n in names], dtype=h5py.string_dtype())


def write_well_file(
    path: str | os.PathLike,
    *,
    dataset_name: str,
    spatial_dims: Sequence[str],
    coords: Mapping[str, Any],
    time: Any,
    t0_fields: Mapping[str, Any] | None = None,
    t1_fields: Mapping[str, Any] | None = None,
    t2_fields: Mapping[str, Any] | None = None,
    constant_t0_fields: Mapping[str, Any] | None = None,
    boundary_conditions: Mapping[str, str],
    params: Mapping[str, float] | None = None,
    grid_type: str = "cartesian",
) -> str:
    """Writes one Well HDF5 file (float32 everywhere, masks bool), atomically (temp name, then ``os.replace``).

    Args:
      path: destination ``.hdf5`` path; parent folders are created.
      spatial_dims: names of the D spatial axes, e.g. ``("x", "y")``; defines spatial axis order.
      coords: ``{dim: (N_i,)}`` coordinates for every name in ``spatial_dims``.
      time: ``(T,)`` time values.
      t0_fields: ``{name: (B, T, *N)}`` scalar fields; t1_fields ``{name: (B, T, *N, D)}``;
        t2_fields ``{name: (B, T, *N, D, D)}``. Dict order is the ``field_names`` (channel) order.
      constant_t0_fields: ``{name: (B, *N)}`` scalar fields constant in time (``time_varying=False``).
      boundary_conditions: ``{dim: "PERIODIC" | "OPEN" | "WALL"}`` applied to both ends of that axis.
      params: ``{name: value}`` simulation parameters (root attrs and 0-d ``/scalars`` datasets).
      grid_type: ``"cartesian"``, ``"spherical"`` or ``"equiangular"``.

    Returns the path written. Raises ValueError naming the argument on inconsistent shapes or names.
    """
    path = os.fspath(path)
    spatial_dims = tuple(str(d) for d in spatial_dims)
    D = len(spatial_dims)
    if D < 1 or len(set(spatial_dims)) != D:
        raise ValueError(f"write_well_file({path}): spatial_dims must be distinct names, got {spatial_dims}")
    if set(coords) != set(spatial_dims):
        raise ValueError(f"write_well_file({path}): coords keys must be spatial_dims {list(spatial_dims)}, "
                         f"got {list(coords)}")
    coord_arr = {d: np.asarray(coords[d], dtype=np.float32) for d in spatial_dims}
    for d, c in coord_arr.items():
        if c.ndim != 1 or c.size < 1:
            raise ValueError(f"write_well_file({path}): coords['{d}'] must be (N,), got shape {c.shape}")
    res = tuple(coord_arr[d].shape[0] for d in spatial_dims)
    time = np.asarray(time, dtype=np.float32)
    if time.ndim != 1 or time.size < 1:
        raise ValueError(f"write_well_file({path}): time must be (T,), got shape {time.shape}")
    T = time.shape[0]
    params = dict(params or {})
    groups = [dict(t0_fields or {}), dict(t1_fields or {}), dict(t2_fields or {})]
    consts = dict(constant_t0_fields or {})

    arrays: list[tuple[int, str, np.ndarray, bool]] = []  # (order, name, array, time_varying)
    B = None
    for order, fields in enumerate(groups):
        for name, a in fields.items():
            arrays.append((order, name, np.asarray(a, dtype=np.float32), True))
    for name, a in consts.items():
        if name in groups[0]:
            raise ValueError(f"write_well_file({path}): field '{name}' is in both t0_fields and constant_t0_fields")
        arrays.append((0, name, np.asarray(a, dtype=np.float32), False))
    if not arrays:
        raise ValueError(f"write_well_file({path}): no fields given (t0/t1/t2/constant_t0_fields are all empty)")
    for order, name, a, tv in arrays:
        B = a.shape[0] if B is None and a.ndim else B
        want = (B,) + ((T,) if tv else ()) + res + (D,) * order
        if a.shape != want:
            kind = f"t{order}_fields" if tv else "constant_t0_fields"
            axes = "(B" + (", T" if tv else "") + ", " + ", ".join(spatial_dims) + ", D" * order + ")"
            raise ValueError(f"write_well_file({path}): {kind}['{name}'] must have shape {axes} = {want}, "
                             f"got {a.shape}")
    for d, bc in boundary_conditions.items():
        if d not in spatial_dims:
            raise ValueError(f"write_well_file({path}): boundary_conditions key '{d}' is not in spatial_dims "
                             f"{list(spatial_dims)}")
        if str(bc).upper() not in BC_CODES:
            raise ValueError(f"write_well_file({path}): boundary_conditions['{d}'] must be one of "
                             f"{sorted(BC_CODES)}, got {bc!r}")
    reserved = {"dataset_name", "grid_type", "n_spatial_dims", "n_trajectories", "simulation_parameters"}
    for p in params:
        if p in reserved:
            raise ValueError(f"write_well_file({path}): parameter name '{p}' collides with a root attribute")

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with h5py.File(tmp, "w") as f:
            f.attrs["dataset_name"] = str(dataset_name)
            f.attrs["grid_type"] = str(grid_type)
            f.attrs["n_spatial_dims"] = np.int64(D)
            f.attrs["n_trajectories"] = np.int64(B)
            f.attrs["simulation_parameters"] = _str_attr_array(list(params))
            for p, v in params.items():
                f.attrs[p] = float(v)

            dg = f.create_group("dimensions")
            dg.attrs["spatial_dims"] = _str_attr_array(spatial_dims)
            t = dg.create_dataset("time", data=time)
            t.attrs["sample_varying"] = False
            t.attrs["time_varying"] = True
            for d in spatial_dims:
                c = dg.create_dataset(d, data=coord_arr[d])
                c.attrs["sample_varying"] = False
                c.attrs["time_varying"] = False

            for order, gname in enumerate(FIELD_GROUPS):
                g = f.create_group(gname)
                names = [n for o, n, _, _ in arrays if o == order]
                g.attrs["field_names"] = _str_attr_array(names)
                for o, name, a, tv in arrays:
                    if o != order:
                        continue
                    ds = g.create_dataset(name, data=a)
                    ds.attrs["sample_varying"] = True
                    ds.attrs["time_varying"] = tv
                    ds.attrs["dim_varying"] = np.ones((D,), dtype=bool)
                    if order == 2:
                        ds.attrs["symmetric"] = False
                        ds.attrs["antisymmetric"] = False

            sg = f.create_group("scalars")
            sg.attrs["field_names"] = _str_attr_array(list(params))
            for p, v in params.items():
                s = sg.create_dataset(p, data=np.array(v, dtype=np.float32))  # 0-d
                s.attrs["sample_varying"] = False
                s.attrs["time_varying"] = False

            bg = f.create_group("boundary_conditions")
            for d, bc in boundary_conditions.items():
                bc = str(bc).upper()
                g = bg.create_group(f"{d}_{bc.lower()}")
                g.attrs["bc_type"] = bc
                g.attrs["associated_dims"] = _str_attr_array([d])
                g.attrs["associated_fields"] = _str_attr_array([])
                g.attrs["sample_varying"] = False
                g.attrs["time_varying"] = False
                mask = np.zeros((res[spatial_dims.index(d)],), dtype=bool)
                mask[0] = True
                mask[-1] = True
                g.create_dataset("mask", data=mask)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


# --------------------------------------------------------------------------------------------------------------
# Lazy split reader
# --------------------------------------------------------------------------------------------------------------


def _windows_per_traj(n_steps: int, n_in: int, n_out: int, dt: int) -> int:
    return max(0, n_steps - dt * (n_in + n_out - 1))


def _check_window_args(n_in: int, n_out: int, dt: int) -> None:
    if int(n_in) < 1 or int(n_out) < 0 or int(dt) < 1:
        raise ValueError(f"window needs n_in >= 1, n_out >= 0, dt >= 1; got n_in={n_in}, n_out={n_out}, dt={dt}")


def _to_full_spatial(x: np.ndarray, spec: FieldSpec, resolution: Sequence[int], n_lead: int) -> np.ndarray:
    """Tiles axes whose ``dim_varying`` is False (stored either with size 1 or omitted) to full resolution.

    x: (*lead, *stored_spatial, *[D]*order) -> (*lead, *resolution, *[D]*order)."""
    if all(spec.dim_varying):
        return x
    D = len(resolution)
    n_stored = x.ndim - n_lead - spec.order
    if n_stored != D:  # compact storage: insert the missing axes
        for i, v in enumerate(spec.dim_varying):
            if not v:
                x = np.expand_dims(x, n_lead + i)
    shape = x.shape[:n_lead] + tuple(resolution) + x.shape[n_lead + D:]
    return np.broadcast_to(x, shape)


# (FileMeta attribute, HDF5 object it comes from) that every file of a split must agree on.
_SPLIT_CONSISTENT = (
    ("dataset_name", "/.attrs['dataset_name']"),
    ("n_spatial_dims", "/.attrs['n_spatial_dims']"),
    ("spatial_dims", "/dimensions.attrs['spatial_dims']"),
    ("resolution", "/dimensions (coordinate sizes)"),
    ("field_names", "/t0_fields,/t1_fields,/t2_fields .attrs['field_names'] (time-varying)"),
    ("constant_field_names", "/t0_fields,/t1_fields,/t2_fields .attrs['field_names'] (time_varying=False)"),
    ("scalar_names", "/scalars.attrs['field_names'] (time-varying)"),
    ("constant_scalar_names", "/scalars.attrs['field_names'] (constant)"),
)


class WellSplit:
    """One split of a Well dataset: ``<base_path>/<dataset_name>/data/<split>/*.hdf5|*.h5`` (sorted).

    Construction reads every file's metadata (cheap schema checks, no field data) and checks that the files agree
    on dataset_name, n_spatial_dims, spatial dims, resolution, channel names and boundary codes. Field data is read
    lazily by h5py slicing; file handles are cached per process (reopened after a fork).
    """

    def __init__(self, base_path: str | os.PathLike, dataset_name: str, split: str, *, full_check: bool = False):
        base_path = os.fspath(base_path)
        split_dir = os.path.join(base_path, dataset_name, "data", split)
        self._init_from(split_dir, os.path.join(base_path, dataset_name, "stats.yaml"), full_check,
                        f"dataset '{dataset_name}', split '{split}'")

    @classmethod
    def from_dir(cls, path: str | os.PathLike, *, full_check: bool = False) -> "WellSplit":
        """A split from a folder of Well files; stats from ``<path>/stats.yaml`` or, for ``<ds>/data/<split>``,
        ``<ds>/stats.yaml``."""
        path = os.fspath(path)
        self = cls.__new__(cls)
        stats = os.path.join(path, "stats.yaml")
        parent = os.path.dirname(os.path.abspath(path))
        if not os.path.isfile(stats) and os.path.basename(parent) == "data":
            stats = os.path.join(os.path.dirname(parent), "stats.yaml")
        self._init_from(path, stats, full_check, f"folder '{path}'")
        return self

    def _init_from(self, split_dir: str, stats_path: str, full_check: bool, what: str) -> None:
        if not os.path.isdir(split_dir):
            raise FileNotFoundError(f"{what}: split directory {split_dir} does not exist. {_HOW_TO_GET_DATA}")
        paths = sorted({p for pat in _H5_SUFFIXES for p in glob.glob(os.path.join(split_dir, pat))})
        if not paths:
            raise FileNotFoundError(f"{what}: no *.hdf5 or *.h5 files in {split_dir}. {_HOW_TO_GET_DATA}")
        self.split_dir = split_dir
        check = validate_file if full_check else read_file_metadata
        self.files: list[FileMeta] = [check(p) for p in paths]
        first = self.files[0]
        for m in self.files[1:]:
            for attr, obj in _SPLIT_CONSISTENT:
                a, b = getattr(first, attr), getattr(m, attr)
                if a != b:
                    raise WellFormatError(f"{m.path}: {obj}: expected {attr} {a!r} (as in {first.path}, the first "
                                          f"file of {split_dir}), found {b!r}")
            if not np.array_equal(first.boundary, m.boundary):
                raise WellFormatError(f"{m.path}: /boundary_conditions: expected codes {first.boundary.tolist()} "
                                      f"(as in {first.path}), found {m.boundary.tolist()}")
        self.dataset_name = first.dataset_name
        self.n_spatial_dims = first.n_spatial_dims
        self.spatial_dims = first.spatial_dims
        self.resolution = first.resolution
        self.field_names = first.field_names
        self.constant_field_names = first.constant_field_names
        self.scalar_names = first.scalar_names
        self.constant_scalar_names = first.constant_scalar_names
        self.boundary = first.boundary.copy()
        self.periodic = tuple(bool(lo == PERIODIC and hi == PERIODIC) for lo, hi in self.boundary.tolist())
        self.stats_path = stats_path
        self.stats = load_stats(stats_path) if os.path.isfile(stats_path) else None
        self._offsets: dict[tuple[int, int, int], np.ndarray] = {}
        self._handles: dict[str, h5py.File] = {}
        self._pid = os.getpid()

    # -- pickling (grain workers) and handles -------------------------------------------------------------------

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_handles"] = {}
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._pid = os.getpid()

    def _file(self, file_idx: int) -> h5py.File:
        if os.getpid() != self._pid:  # forked: the parent's handles must not be shared
            self._handles = {}
            self._pid = os.getpid()
        path = self.files[file_idx].path
        h = self._handles.get(path)
        if h is None or not h.id.valid:
            h = _open_h5(path)
            self._handles[path] = h
        return h

    def close(self) -> None:
        """Closes this process's cached file handles."""
        if os.getpid() == self._pid:
            for h in self._handles.values():
                try:
                    h.close()
                except Exception:  # noqa: BLE001 - closing is best effort
                    pass
        self._handles = {}

    # -- windows ----------------------------------------------------------------------------------------------

    def _window_offsets(self, n_in: int, n_out: int, dt: int) -> np.ndarray:
        key = (int(n_in), int(n_out), int(dt))
        if key not in self._offsets:
            _check_window_args(*key)
            counts = [m.n_trajectories * _windows_per_traj(m.n_steps, *key) for m in self.files]
            self._offsets[key] = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        return self._offsets[key]

    def num_windows(self, n_in: int, n_out: int, dt: int = 1) -> int:
        """Number of windows: sum over files of n_trajectories * max(0, T - dt*(n_in+n_out-1))."""
        return int(self._window_offsets(n_in, n_out, dt)[-1])

    def locate(self, index: int, n_in: int, n_out: int, dt: int = 1) -> tuple[int, int, int]:
        """Global window index -> ``(file_idx, traj, t0)`` in The Well's order (file -> trajectory -> start)."""
        off = self._window_offsets(n_in, n_out, dt)
        index = int(index)
        if not 0 <= index < off[-1]:
            raise IndexError(f"window index {index} out of range [0, {int(off[-1])}) for {self.split_dir} "
                             f"(n_in={n_in}, n_out={n_out}, dt={dt})")
        file_idx = int(np.searchsorted(off, index, side="right") - 1)
        w = _windows_per_traj(self.files[file_idx].n_steps, n_in, n_out, dt)
        local = index - int(off[file_idx])
        return file_idx, local // w, local % w

    def _meta(self, file_idx: int) -> FileMeta:
        if not 0 <= int(file_idx) < len(self.files):
            raise IndexError(f"file index {file_idx} out of range [0, {len(self.files)}) for {self.split_dir}")
        return self.files[int(file_idx)]

    def trajectories(self) -> list[tuple[int, int, int]]:
        """Every trajectory as ``(file_idx, traj, n_steps)``, in file -> trajectory order."""
        return [(i, b, m.n_steps) for i, m in enumerate(self.files) for b in range(m.n_trajectories)]

    def _read_fields(self, file_idx: int, traj: int, tsel: slice, specs: Sequence[FieldSpec]) -> np.ndarray:
        """Reads ``specs`` for one trajectory and time selection -> (T', *N, C) (or (*N, C) for constant fields)."""
        meta = self.files[file_idx]
        f = self._file(file_idx)
        out = []
        for s in specs:
            idx = ((traj,) if s.sample_varying else ()) + ((tsel,) if s.time_varying else ())
            try:
                x = np.asarray(f[s.h5path][idx], dtype=np.float32)
            except (KeyError, OSError) as e:
                raise WellFormatError(f"{meta.path}: {s.h5path}: expected a readable dataset, found an error "
                                      f"reading trajectory {traj}, time {tsel.start}:{tsel.stop}:{tsel.step} "
                                      f"({e})") from None
            if not np.all(np.isfinite(x)):
                when = f"time {tsel.start}:{tsel.stop}:{tsel.step}" if s.time_varying else "(constant in time)"
                raise WellFormatError(f"{meta.path}: {s.h5path}: expected finite values, found NaN/Inf in "
                                      f"trajectory {traj}, {when}")
            n_lead = int(s.time_varying)
            x = _to_full_spatial(x, s, meta.resolution, n_lead)
            x = x.reshape(x.shape[: x.ndim - s.order] + (len(s.components),))  # components row-major
            out.append(x)
        return np.ascontiguousarray(np.concatenate(out, axis=-1), dtype=np.float32)

    def _read_scalars(self, file_idx: int, traj: int, tsel: slice, specs: Sequence[ScalarSpec]) -> np.ndarray:
        meta = self.files[file_idx]
        f = self._file(file_idx)
        out = []
        for s in specs:
            idx = ((traj,) if s.sample_varying else ()) + ((tsel,) if s.time_varying else ())
            try:
                x = np.asarray(f[s.h5path][idx], dtype=np.float32)
            except (KeyError, OSError) as e:
                raise WellFormatError(f"{meta.path}: {s.h5path}: expected a readable dataset, found an error "
                                      f"reading trajectory {traj} ({e})") from None
            if len(s.shape) and s.shape[-1] == 1 and x.ndim == int(s.time_varying) + 1:
                x = x[..., 0]
            if not np.all(np.isfinite(x)):
                raise WellFormatError(f"{meta.path}: {s.h5path}: expected finite values, found NaN/Inf in "
                                      f"trajectory {traj}")
            out.append(x)
        return np.stack(out, axis=-1).astype(np.float32)

    def read_window(self, file_idx: int, traj: int, t0: int, n_in: int, n_out: int, dt: int = 1
                    ) -> dict[str, np.ndarray]:
        """Reads one window: steps ``t0, t0+dt, ..., t0+(n_in+n_out-1)*dt`` of trajectory ``traj``.

        Returns ``input_fields (Ti, *N, C)``, ``output_fields (To, *N, C)`` (omitted when n_out == 0),
        ``constant_fields (*N, Cc)`` and ``constant_scalars (Sc,)`` when the dataset has them,
        ``input_scalars (Ti, S)`` / ``output_scalars (To, S)`` when it has time-varying scalars, and
        ``boundary (D, 2)`` int32. Values are as stored (not normalised), float32.
        """
        _check_window_args(n_in, n_out, dt)
        meta = self._meta(file_idx)
        if not 0 <= traj < meta.n_trajectories:
            raise IndexError(f"{meta.path}: trajectory {traj} out of range [0, {meta.n_trajectories})")
        n = n_in + n_out
        if t0 < 0 or t0 + (n - 1) * dt >= meta.n_steps:
            raise IndexError(f"{meta.path}: window t0={t0}, {n} steps, dt={dt} exceeds the {meta.n_steps} "
                             f"time steps of trajectory {traj}")
        tsel = slice(t0, t0 + n * dt, dt)
        out: dict[str, np.ndarray] = {}
        if meta.field_specs:
            x = self._read_fields(file_idx, traj, tsel, meta.field_specs)  # (n, *N, C)
            out["input_fields"] = x[:n_in]
            if n_out > 0:
                out["output_fields"] = x[n_in:]
        if meta.constant_field_specs:
            out["constant_fields"] = self._read_fields(file_idx, traj, tsel, meta.constant_field_specs)
        if meta.scalar_specs:
            s = self._read_scalars(file_idx, traj, tsel, meta.scalar_specs)  # (n, S)
            out["input_scalars"] = s[:n_in]
            if n_out > 0:
                out["output_scalars"] = s[n_in:]
        if meta.constant_scalar_specs:
            out["constant_scalars"] = self._read_scalars(file_idx, traj, tsel, meta.constant_scalar_specs)
        out["boundary"] = meta.boundary.copy()
        return out

    def read_trajectory(self, file_idx: int, traj: int) -> np.ndarray:
        """All time steps of one trajectory's time-varying fields -> (T, *N, C) float32."""
        meta = self._meta(file_idx)
        if not 0 <= traj < meta.n_trajectories:
            raise IndexError(f"{meta.path}: trajectory {traj} out of range [0, {meta.n_trajectories})")
        return self._read_fields(file_idx, traj, slice(0, meta.n_steps, 1), meta.field_specs)

    def read_constants(self, file_idx: int, traj: int) -> dict[str, np.ndarray]:
        """``constant_fields (*N, Cc)`` / ``constant_scalars (Sc,)`` of one trajectory (keys present if any)."""
        meta = self._meta(file_idx)
        if not 0 <= traj < meta.n_trajectories:
            raise IndexError(f"{meta.path}: trajectory {traj} out of range [0, {meta.n_trajectories})")
        out = {}
        tsel = slice(0, meta.n_steps, 1)
        if meta.constant_field_specs:
            out["constant_fields"] = self._read_fields(file_idx, traj, tsel, meta.constant_field_specs)
        if meta.constant_scalar_specs:
            out["constant_scalars"] = self._read_scalars(file_idx, traj, tsel, meta.constant_scalar_specs)
        return out

    def channel_stats(self, *, delta: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """(mean (C,), std (C,)) of the time-varying channels from ``self.stats``."""
        return channel_stats(self._need_stats(), self.field_names, self.spatial_dims, delta=delta)

    def constant_channel_stats(self) -> tuple[np.ndarray, np.ndarray]:
        """(mean (Cc,), std (Cc,)) of the constant channels from ``self.stats``."""
        return channel_stats(self._need_stats(), self.constant_field_names, self.spatial_dims)

    def _need_stats(self) -> dict:
        if self.stats is None:
            raise FileNotFoundError(f"no stats file {self.stats_path}; compute it from the train split with "
                                    f"tokpre.data.well.write_stats('<base>/<dataset>')")
        return self.stats

    def __repr__(self) -> str:
        return (f"WellSplit({self.split_dir!r}, files={len(self.files)}, resolution={self.resolution}, "
                f"channels={len(self.field_names)})")


# --------------------------------------------------------------------------------------------------------------
# Normalisation statistics
# --------------------------------------------------------------------------------------------------------------


class _Moments:
    """Running float64 sums per component: count, sum x, sum x^2."""

    def __init__(self):
        self.n = 0
        self.s1 = None
        self.s2 = None

    def add(self, x: np.ndarray, order: int) -> None:
        x = np.asarray(x, dtype=np.float64)
        comp = x.shape[x.ndim - order:] if order else ()
        flat = x.reshape((-1,) + comp)
        if flat.shape[0] == 0:
            return
        s1, s2 = flat.sum(0), np.square(flat).sum(0)
        self.s1 = s1 if self.s1 is None else self.s1 + s1
        self.s2 = s2 if self.s2 is None else self.s2 + s2
        self.n += flat.shape[0]

    def result(self) -> tuple[Any, Any, Any]:
        m1 = self.s1 / self.n
        m2 = self.s2 / self.n
        std = np.sqrt(np.maximum(m2 - m1 * m1, 0.0))
        rms = np.sqrt(m2)
        return _tolist(m1), _tolist(std), _tolist(rms)


def _tolist(a) -> Any:
    a = np.asarray(a, dtype=np.float64)
    return float(a) if a.ndim == 0 else a.tolist()


def compute_stats(train_files: Sequence[str | os.PathLike]) -> dict:
    """Normalisation statistics of The Well's ``stats.yaml`` over ``train_files``.

    Returns ``{key: {core_field: value}}`` for key in mean, std, rms (every field) and mean_delta, std_delta,
    rms_delta (time-varying fields, over ``x[:, 1:] - x[:, :-1]`` along time). A value is a float for t0 fields, a
    list of D for t1 and a DxD nested list for t2 (reduced over every axis but the trailing tensor axes). Moments
    are pooled in float64 over all files weighted by element count: std = sqrt(m2 - m1^2), rms = sqrt(m2).
    """
    if not train_files:
        raise FileNotFoundError(f"compute_stats: no train files given. {_HOW_TO_GET_DATA}")
    acc: dict[str, _Moments] = {}
    acc_d: dict[str, _Moments] = {}
    order_of: dict[str, int] = {}
    for p in train_files:
        meta = read_file_metadata(p)
        with _open_h5(meta.path) as f:
            for s in meta.field_specs + meta.constant_field_specs:
                if order_of.setdefault(s.name, s.order) != s.order:
                    raise WellFormatError(f"{meta.path}: {s.h5path}: expected tensor order {order_of[s.name]} "
                                          f"(as in earlier files), found order {s.order}")
                ds = f[s.h5path]
                m = acc.setdefault(s.name, _Moments())
                chunks = (ds[b] for b in range(ds.shape[0])) if s.sample_varying else (ds[()],)
                for x in chunks:  # one trajectory at a time: (T, *N, *comp) or (*N, *comp)
                    x = np.asarray(x, dtype=np.float64)
                    m.add(x, s.order)
                    if s.time_varying:
                        acc_d.setdefault(s.name, _Moments()).add(np.diff(x, axis=0), s.order)
    stats: dict[str, dict] = {k: {} for k in STATS_KEYS}
    for name, m in acc.items():
        if m.n == 0:
            continue
        stats["mean"][name], stats["std"][name], stats["rms"][name] = m.result()
    for name, m in acc_d.items():
        if m.n == 0:  # a single time step has no differences
            continue
        stats["mean_delta"][name], stats["std_delta"][name], stats["rms_delta"][name] = m.result()
    return stats


class _StatsDumper(yaml.SafeDumper):
    pass


def _represent_float(dumper: yaml.SafeDumper, v: float):
    if math.isnan(v):
        s = ".nan"
    elif math.isinf(v):
        s = ".inf" if v > 0 else "-.inf"
    else:
        s = f"{v:.4E}"
    return dumper.represent_scalar("tag:yaml.org,2002:float", s)


_StatsDumper.add_representer(float, _represent_float)


def _plain(v: Any) -> Any:
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple, np.ndarray)):
        return [_plain(x) for x in (v.tolist() if isinstance(v, np.ndarray) else v)]
    return float(v)


def dump_stats(stats: Mapping, path: str | os.PathLike) -> None:
    """Writes a stats dict as yaml (values ``%.4E``, keys sorted like The Well's files), atomically."""
    path = os.fspath(path)
    text = yaml.dump(_plain(dict(stats)), Dumper=_StatsDumper, default_flow_style=None, sort_keys=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


def write_stats(dataset_dir: str | os.PathLike) -> dict:
    """Computes stats over ``<dataset_dir>/data/train/*.hdf5|*.h5`` and writes ``<dataset_dir>/stats.yaml``."""
    dataset_dir = os.fspath(dataset_dir)
    train = os.path.join(dataset_dir, "data", "train")
    files = sorted({p for pat in _H5_SUFFIXES for p in glob.glob(os.path.join(train, pat))})
    if not files:
        raise FileNotFoundError(f"write_stats: no *.hdf5 or *.h5 files in {train}. {_HOW_TO_GET_DATA}")
    stats = compute_stats(files)
    dump_stats(stats, os.path.join(dataset_dir, "stats.yaml"))
    return stats


def load_stats(path: str | os.PathLike) -> dict:
    """Reads a ``stats.yaml``; requires mapping sections ``mean`` and ``std`` (others optional, as in The Well)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"stats file {path} does not exist; create it with "
                                f"tokpre.data.well.write_stats('<base>/<dataset>') or download it with the data")
    try:
        with open(path) as fh:
            stats = yaml.safe_load(fh)
    except yaml.YAMLError as e:
        raise WellFormatError(f"{path}: expected YAML, found a parse error ({e})") from None
    if not isinstance(stats, dict):
        raise WellFormatError(f"{path}: expected a mapping with keys {list(STATS_KEYS)}, found {type(stats).__name__}")
    for k in ("mean", "std"):
        if not isinstance(stats.get(k), dict):
            raise WellFormatError(f"{path}: {k}: expected a mapping of field -> value, found {stats.get(k)!r}")
    return stats


def _resolve_channel(stats: Mapping, name: str, spatial_dims: Sequence[str]) -> tuple[str, tuple[int, ...]]:
    """Flattened channel name -> (core field, component index) in ``stats['mean']``."""
    means = stats["mean"]
    if name in means and np.ndim(means[name]) == 0:
        return name, ()
    for order in (1, 2):
        for combo in itertools.product(range(len(spatial_dims)), repeat=order):
            suffix = "_" + "".join(spatial_dims[i] for i in combo)
            if name.endswith(suffix):
                core = name[: -len(suffix)]
                if core in means and np.ndim(means[core]) == order:
                    return core, combo
    raise WellFormatError(f"stats: channel '{name}': expected a core-field entry (e.g. '{name}' scalar or "
                          f"'<field>' with components over {list(spatial_dims)}), found fields {sorted(means)}")


def channel_stats(stats: Mapping, field_names_flat: Sequence[str], spatial_dims: Sequence[str], *,
                  delta: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel ``(mean (C,), std (C,))`` float32 for flattened channel names (time-varying or constant).

    ``velocity_x`` takes component 0 of ``stats['mean']['velocity']``; ``D_xy`` takes ``[0][1]`` of ``D``.
    With ``delta=True`` the ``mean_delta`` / ``std_delta`` sections are used (time-varying fields only).
    """
    mk, sk = ("mean_delta", "std_delta") if delta else ("mean", "std")
    for k in (mk, sk):
        if not isinstance(stats.get(k), Mapping):
            raise WellFormatError(f"stats: expected a '{k}' section, found {sorted(stats)}")
    mean, std = [], []
    for name in field_names_flat:
        core, idx = _resolve_channel(stats, name, spatial_dims)
        vals = []
        for k in (mk, sk):
            if core not in stats[k]:
                raise WellFormatError(f"stats: {k}: expected an entry for field '{core}' (channel '{name}'), "
                                      f"found fields {sorted(stats[k])}")
            v = np.asarray(stats[k][core], dtype=np.float64)
            vals.append(float(v[idx]) if idx else float(v))
        mean.append(vals[0])
        std.append(vals[1])
    return np.asarray(mean, dtype=np.float32), np.asarray(std, dtype=np.float32)
