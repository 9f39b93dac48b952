"""One device mesh for every stage, logical-axis rules, and multi-host initialisation.

Parameters carry *logical* axis names (``nn.with_logical_partitioning``); one rules table maps them to the mesh
axes ``('data', 'fsdp', 'model')``. Switching between data parallel, FSDP and FSDP + tensor parallel changes the
config (``mesh.shape`` and ``mesh.rules``), never the model. Batches are sharded over ``('data', 'fsdp')``.

A logical axis whose size does not divide its mesh axes is replicated instead (and reported once), so a tiny
debug model runs on any mesh; real-sized models divide cleanly.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from absl import logging
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "model")
BATCH_AXES = ("data", "fsdp")

# Logical-axis rule presets (config key mesh.rules). Unlisted logical names are replicated.
RULES: dict[str, tuple[tuple[str, Any], ...]] = {
    # Pure data parallel: every parameter replicated.
    "dp": (),
    # FSDP: shard the channel/embedding axes of every weight over 'fsdp'.
    "fsdp": (
        ("embed", "fsdp"),
        ("conv_out", "fsdp"),
        ("vocab", "fsdp"),
        ("latent", None),
        ("mlp", None),
        ("heads", None),
    ),
    # FSDP + tensor parallel on the processor's attention heads and MLP hidden units.
    "fsdp_tp": (
        ("embed", "fsdp"),
        ("conv_out", "fsdp"),
        ("vocab", "fsdp"),
        ("heads", "model"),
        ("mlp", "model"),
    ),
}


def _int_setting(cfg: Mapping[str, Any], key: str, env: str) -> int:
    """``cfg[key]`` when set (>= 0), else the environment variable ``env``; a clear error when neither is."""
    v = cfg.get(key)
    if v is not None and int(v) >= 0 and not (key == "num_processes" and int(v) == 0):
        return int(v)
    if env in os.environ:
        return int(os.environ[env])
    raise ValueError(f"multi-host run with a coordinator address needs config key distributed.{key} or the "
                     f"environment variable {env}; found neither")


def _platforms() -> str:
    return str(jax.config.jax_platforms or os.environ.get("JAX_PLATFORMS", "")).lower()


def maybe_initialize_distributed(cfg: Mapping[str, Any] | None = None) -> None:
    """Calls ``jax.distributed.initialize`` when the config or the environment asks for it.

    - ``cfg.coordinator_address`` (with ``num_processes``, ``process_id``): an explicit cluster;
    - ``TOKPRE_COORDINATOR`` / ``TOKPRE_NUM_PROCESSES`` / ``TOKPRE_PROCESS_ID`` environment variables (the local
      multi-process launcher sets them; ``TOKPRE_LOCAL_DEVICE_IDS`` optionally pins this process's devices);
    - ``cfg.auto`` or a SLURM/TPU-pod environment: ``jax.distributed.initialize()`` detects the cluster itself.

    On CPU (``JAX_PLATFORMS=cpu``) cross-process collectives need an implementation: JAX 0.10 defaults to gloo,
    and this makes sure it is not switched off. Must run before any JAX computation. Safe to call twice.
    """
    cfg = dict(cfg or {})
    if jax.distributed.is_initialized():
        return
    addr = cfg.get("coordinator_address") or os.environ.get("TOKPRE_COORDINATOR")
    auto = bool(cfg.get("auto")) \
        or int(os.environ.get("SLURM_NTASKS", "1")) > 1 \
        or "," in os.environ.get("TPU_WORKER_HOSTNAMES", "")
    if not addr and not auto:
        return
    if "cpu" in _platforms().split(",") and jax.config.jax_cpu_collectives_implementation is None:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if addr:
        nproc = _int_setting(cfg, "num_processes", "TOKPRE_NUM_PROCESSES")
        pid = _int_setting(cfg, "process_id", "TOKPRE_PROCESS_ID")
        if not 0 <= pid < nproc:
            raise ValueError(f"process id {pid} is outside [0, {nproc}) (distributed.process_id / "
                             f"TOKPRE_PROCESS_ID vs distributed.num_processes / TOKPRE_NUM_PROCESSES)")
        kw = {}
        local = os.environ.get("TOKPRE_LOCAL_DEVICE_IDS")
        if local:
            kw["local_device_ids"] = [int(i) for i in local.split(",")]
        jax.distributed.initialize(coordinator_address=addr, num_processes=nproc, process_id=pid, **kw)
    else:
        jax.distributed.initialize()


def mesh_shape(shape: Sequence[int], n_devices: int) -> tuple[int, ...]:
    """Resolves one ``-1`` entry of ``shape`` to the remaining devices; checks the product."""
    shape = [int(s) for s in shape]
    if len(shape) != len(MESH_AXES):
        raise ValueError(f"config key mesh.shape must have {len(MESH_AXES)} entries for axes {MESH_AXES}, "
                         f"got {tuple(shape)}")
    if shape.count(-1) > 1:
        raise ValueError(f"config key mesh.shape may hold at most one -1, got {tuple(shape)}")
    known = math.prod(s for s in shape if s != -1)
    if -1 in shape:
        if n_devices % known:
            raise ValueError(f"mesh.shape {tuple(shape)}: {n_devices} devices are not divisible by {known}")
        shape[shape.index(-1)] = n_devices // known
    if math.prod(shape) != n_devices:
        raise ValueError(f"mesh.shape {tuple(shape)} needs {math.prod(shape)} devices, found {n_devices}")
    return tuple(shape)


def make_mesh(shape: Sequence[int] = (-1, 1, 1), devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A ``('data', 'fsdp', 'model')`` mesh over all (or the given) devices."""
    devices = list(devices if devices is not None else jax.devices())
    shp = mesh_shape(shape, len(devices))
    arr = np.asarray(devices, dtype=object).reshape(shp)
    return Mesh(arr, MESH_AXES)


def get_rules(rules: str | Sequence[Sequence[Any]]) -> tuple[tuple[str, Any], ...]:
    """A rules preset by name (``dp``, ``fsdp``, ``fsdp_tp``) or an explicit list of (logical, mesh) pairs."""
    if isinstance(rules, str):
        if rules not in RULES:
            raise ValueError(f"config key mesh.rules: unknown preset {rules!r}; expected one of {sorted(RULES)}")
        return RULES[rules]
    return tuple((str(a), b) for a, b in rules)


def _mesh_axis_size(mesh: Mesh, axis: Any) -> int:
    if axis is None:
        return 1
    if isinstance(axis, (tuple, list)):
        return math.prod(mesh.shape[a] for a in axis)
    return mesh.shape[axis]


_REPORTED: set[tuple] = set()   # (logical name, size, mesh axis) already logged as replicated


def logical_to_sharding(logical: Sequence[str | None] | None, shape: Sequence[int], mesh: Mesh,
                        rules: Sequence[tuple[str, Any]]) -> NamedSharding:
    """NamedSharding for one array from its logical axis names; non-dividing axes are replicated."""
    if logical is None:
        return NamedSharding(mesh, P())
    table = dict(rules)
    used: set[str] = set()
    spec = []
    for name, size in zip(logical, shape):
        axis = table.get(name) if name is not None else None
        flat = tuple(axis) if isinstance(axis, (tuple, list)) else ((axis,) if axis else ())
        if axis is None or size % _mesh_axis_size(mesh, axis) or used & set(flat) \
                or _mesh_axis_size(mesh, axis) == 1:
            if axis is not None and size % _mesh_axis_size(mesh, axis) and (name, size, axis) not in _REPORTED:
                _REPORTED.add((name, size, axis))
                logging.info("logical axis %r of size %d does not divide mesh axis %r (size %d): replicated",
                             name, size, axis, _mesh_axis_size(mesh, axis))
            spec.append(None)
        else:
            spec.append(axis)
            used |= set(flat)
    return NamedSharding(mesh, P(*spec))


def _largest_divisible_axis_spec(shape: Sequence[int], mesh: Mesh, axis: str) -> P:
    n = mesh.shape[axis]
    if n == 1:
        return P()
    best = None
    for i, s in enumerate(shape):
        if s % n == 0 and s >= n and (best is None or s > shape[best]):
            best = i
    if best is None:
        return P()
    spec = [None] * len(shape)
    spec[best] = axis
    return P(*spec)


def params_shardings(boxed_abstract: Any, mesh: Mesh, rules: Sequence[tuple[str, Any]]) -> Any:
    """Shardings for an (abstract) parameter tree that may hold ``nn.LogicallyPartitioned`` boxes."""

    def one(x):
        if isinstance(x, nn.LogicallyPartitioned):
            return logical_to_sharding(x.names, x.value.shape, mesh, rules)
        return NamedSharding(mesh, P())

    return jax.tree.map(one, boxed_abstract, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))


def opt_state_shardings(abstract_opt_state: Any, params: Any, param_shardings: Any, mesh: Mesh,
                        rules: Sequence[tuple[str, Any]]) -> Any:
    """Shardings for optimiser state.

    A leaf whose tree path ends with a parameter's path and has that parameter's shape (Adam's and SOAP's
    moments ``...mu['encoder']['down0']['kernel']``) takes that parameter's sharding. Any other leaf (SOAP's
    per-axis statistics and bases ``...stats[<param path>][i]`` of shape (d_i, d_i)) is sharded along its
    largest axis divisible by the ``fsdp`` size when the rules use ``fsdp``, and replicated otherwise; scalars
    (step counts) are replicated. ``None`` entries (SOAP's identity axes) stay ``None``.
    """
    fsdp_on = any(v == "fsdp" or (isinstance(v, (tuple, list)) and "fsdp" in v) for _, v in rules)
    by_path: dict[str, tuple[tuple, NamedSharding]] = {}
    p_leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    s_leaves = jax.tree.leaves(param_shardings)
    if len(p_leaves) != len(s_leaves):
        raise ValueError(f"opt_state_shardings: {len(p_leaves)} parameters but {len(s_leaves)} shardings")
    for (path, leaf), sh in zip(p_leaves, s_leaves):
        by_path[jax.tree_util.keystr(path)] = (tuple(leaf.shape), sh)

    def one(path, x):
        shape = tuple(getattr(x, "shape", ()))
        if not shape:
            return NamedSharding(mesh, P())
        for k in range(len(path)):          # longest suffix first: the parameter this leaf mirrors
            hit = by_path.get(jax.tree_util.keystr(path[k:]))
            if hit is not None and hit[0] == shape:
                return hit[1]
        if fsdp_on:
            return NamedSharding(mesh, _largest_divisible_axis_spec(shape, mesh, "fsdp"))
        return NamedSharding(mesh, P())

    return jax.tree_util.tree_map_with_path(one, abstract_opt_state)


def batch_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
    """Leading (batch) axis over ``('data', 'fsdp')``, the rest replicated."""
    return NamedSharding(mesh, P(BATCH_AXES, *([None] * (ndim - 1))))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def data_parallel_size(mesh: Mesh) -> int:
    return mesh.shape["data"] * mesh.shape["fsdp"]


def global_batch(local: Mapping[str, np.ndarray], mesh: Mesh,
                 unbatched: Sequence[str] = ("field_ids", "boundary")) -> dict[str, jax.Array]:
    """Assembles a global ``jax.Array`` batch from this process's local share.

    Batched entries are sharded over ``('data', 'fsdp')`` with ``jax.make_array_from_process_local_data``;
    entries in ``unbatched`` (identical on every process) are replicated.
    """
    out = {}
    for k, v in local.items():
        v = np.asarray(v)
        if k in unbatched:
            out[k] = jax.make_array_from_process_local_data(replicated(mesh), v, v.shape)
        else:
            out[k] = jax.make_array_from_process_local_data(batch_sharding(mesh, v.ndim), v)
    return out


def describe(mesh: Mesh) -> str:
    return (f"mesh {dict(mesh.shape)} over {mesh.devices.size} devices "
            f"({jax.process_count()} processes, this is process {jax.process_index()})")


def log_devices() -> None:
    logging.info("JAX process %d/%d, local devices %s, global device count %d", jax.process_index(),
                 jax.process_count(), jax.local_devices(), jax.device_count())
