"""Orbax checkpoints of a stage, and the AE -> emulator warm start.

A stage's checkpoints live in ``<workdir>/<stage>/checkpoints/<step>/`` with three items:
``state`` (the sharded ``TrainState``), ``data`` (the Grain iterator, one JSON per process) and ``meta``
(the field vocabulary and the compression settings). Orbax writes each step under a temporary name and renames
it when complete, so an interrupted save never leaves a half checkpoint that a resume would pick up.

``load_run(workdir)`` restores one stage of a finished (or running) run from its workdir alone, for notebooks and
``tokpre.analyse``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path
from typing import Any

import grain
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from tokpre.data.fields import FieldVocab
from tokpre.train.state import TrainState, abstract_with_shardings


class StageCheckpointer:
    """A thin wrapper of ``ocp.CheckpointManager`` for one stage directory."""

    def __init__(self, directory: str | Path, *, max_to_keep: int = 3):
        self.directory = Path(directory).absolute()
        opts = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                            enable_async_checkpointing=False)
        handlers = {"state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler(),
                    "data": grain.checkpoint.CheckpointHandler()}
        self._mgr = ocp.CheckpointManager(self.directory, options=opts, item_handlers=handlers)

    def latest_step(self) -> int | None:
        return self._mgr.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._mgr.all_steps())

    def save(self, step: int, state: TrainState, *, data_iter: Any = None, meta: dict | None = None) -> None:
        items = {"state": ocp.args.StandardSave(state), "meta": ocp.args.JsonSave(meta or {})}
        if data_iter is not None:
            items["data"] = grain.checkpoint.CheckpointSave(data_iter)
        self._mgr.save(step, args=ocp.args.Composite(**items), force=True)
        self._mgr.wait_until_finished()

    def restore(self, step: int | None, abstract_state: TrainState, state_shardings: TrainState, *,
                data_iter: Any = None) -> tuple[TrainState, dict]:
        """Restores ``state`` (into ``state_shardings``), the iterator in place, and returns ``(state, meta)``."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        target = abstract_with_shardings(abstract_state, state_shardings)
        items = {"state": ocp.args.StandardRestore(target), "meta": ocp.args.JsonRestore()}
        if data_iter is not None:
            items["data"] = grain.checkpoint.CheckpointRestore(data_iter)
        out = self._mgr.restore(step, args=ocp.args.Composite(**items))
        return out["state"], dict(out["meta"] or {})

    def restore_meta(self, step: int | None = None) -> dict:
        step = self.latest_step() if step is None else step
        out = self._mgr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        return dict(out["meta"] or {})

    def restore_params(self, step: int | None, abstract_params: Any, shardings: Any) -> Any:
        """Restores only ``state.params`` into the given abstract tree and shardings (no optimiser state)."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        target = {"params": abstract_with_shardings(abstract_params, shardings)}
        restore_args = jax.tree.map(lambda s: ocp.ArrayRestoreArgs(sharding=s), {"params": shardings})
        # Read the 'state' item directly with a PyTree checkpointer: a partial restore of only its params.
        with ocp.PyTreeCheckpointer() as ckptr:
            out = ckptr.restore(self.directory / str(step) / "state", args=ocp.args.PyTreeRestore(
                item=target, restore_args=restore_args, partial_restore=True))
        return out["params"]

    def stored_param_shapes(self, step: int | None = None) -> dict[str, tuple]:
        """``{path: shape}`` of the parameters stored at ``step``, read from checkpoint metadata only."""
        step = self.latest_step() if step is None else step
        meta = self._mgr.item_metadata(step)
        tree = meta["state"]
        tree = tree.tree if hasattr(tree, "tree") else tree
        params = tree["params"]
        return {jax.tree_util.keystr(p): tuple(v.shape) for p, v in jax.tree_util.tree_flatten_with_path(params)[0]}

    def close(self) -> None:
        self._mgr.close()


class TreeMismatchError(ValueError):
    """Raised when a checkpoint's parameter tree does not fit the target tree."""


def check_tree_compatible(found: dict[str, tuple], expected: dict[str, tuple], *, what: str) -> None:
    """Compares ``{path: shape}`` maps and raises naming every missing, unexpected or mis-shaped path."""
    problems = []
    for p in sorted(set(expected) - set(found)):
        problems.append(f"  missing in checkpoint: {p} (expected shape {expected[p]})")
    for p in sorted(set(found) - set(expected)):
        problems.append(f"  unexpected in checkpoint: {p} (shape {found[p]})")
    for p in sorted(set(found) & set(expected)):
        if tuple(found[p]) != tuple(expected[p]):
            problems.append(f"  shape mismatch at {p}: checkpoint {tuple(found[p])}, model {tuple(expected[p])}")
    if problems:
        raise TreeMismatchError(f"{what} does not match the model's parameter tree:\n" + "\n".join(problems)
                                + "\nCheck that the model config (e.g. model.tokeniser.latent_channels, widths) "
                                  "matches the config the checkpoint was trained with.")


def path_shapes(tree: Any) -> dict[str, tuple]:
    return {jax.tree_util.keystr(p): tuple(v.shape) for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def vocab_permutation(src: FieldVocab, dst: FieldVocab, rows: int) -> np.ndarray | None:
    """Row map for field-indexed tables: ``new[i] = old[perm[i]]``, matching rows by field name.

    Returns None when the two vocabularies agree on every row (the common case, since known names have fixed
    ids). Rows of names the source never had keep their own (fresh) index, i.e. are left as they are.
    """
    perm = np.arange(rows)
    changed = False
    for i, name in enumerate(dst.names[:rows]):
        if name in src:
            j = src.id(name)
            if j < rows and j != i:
                perm[i] = j
                changed = True
    return perm if changed else None


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


# ------------------------------------------------------------------------------------------------ load a run

RUN_STAGES = ("ae", "dyn")


def _tuples(x: Any) -> Any:
    """JSON lists back to tuples, recursively (the config's sequences are tuples; JSON turned them into lists)."""
    if isinstance(x, dict):
        return {k: _tuples(v) for k, v in x.items()}
    if isinstance(x, list):
        return tuple(_tuples(v) for v in x)
    return x


def load_config(workdir: str | Path):
    """The resolved ``ml_collections.ConfigDict`` saved by ``tokpre.main`` in ``<workdir>/config.json``."""
    import ml_collections
    path = Path(workdir) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"no config.json in {Path(workdir).absolute()}: expected a workdir written by "
                                f"`python -m tokpre.main --workdir=...` (it saves the resolved config there)")
    return ml_collections.ConfigDict(_tuples(read_json(path)))


@dataclasses.dataclass
class Run:
    """A restored stage of a run: what a notebook needs to call the model.

    ``params`` is the model's parameter tree (AE: ``{'encoder','decoder'}``; dyn: ``{'tokeniser','processor'}``).
    ``compression`` is the dyn stage's ``(t, s)``, or the first compression the AE trained with; ``compressions``
    lists every compression the stage used. ``dataset`` / ``field_names`` / ``field_ids`` / ``periodic`` describe
    the stage's (first) dataset; they are None when its files cannot be read from ``config.data.well_base_path``.
    """

    workdir: Path
    config: Any
    stage: str
    step: int
    model: Any
    params: Any
    mesh: Any
    compression: tuple[int, int]
    compressions: tuple[tuple[int, int], ...]
    dataset: str
    field_names: tuple[str, ...] | None = None
    field_ids: np.ndarray | None = None      # (C,) int32 ids in the global field vocabulary
    periodic: tuple[bool, ...] | None = None

    def apply(self, x, *, compression: tuple[int, int] | None = None, field_ids=None,
              periodic: tuple[bool, ...] | None = None):
        """AE: reconstruction of ``x (B, T, *N, C)``; dyn: the next ``t`` frames ``(B, t, *N, C)`` after the window
        ``x (B, n_steps_input, *N, C)``. Inputs are normalised fields (as the pipeline yields them)."""
        ids = self.field_ids if field_ids is None else field_ids
        per = self.periodic if periodic is None else tuple(periodic)
        if ids is None or per is None:
            raise ValueError(f"Run.apply: dataset {self.dataset!r} could not be read under "
                             f"{self.config.data.well_base_path}; pass field_ids and periodic explicitly")
        comp = self.compression if compression is None else tuple(int(v) for v in compression)
        return _jitted_apply(self.model, per, comp)(self.params, jnp.asarray(x), jnp.asarray(ids, jnp.int32))


@functools.lru_cache(maxsize=32)
def _jitted_apply(model, periodic: tuple[bool, ...], compression: tuple[int, int]):
    """``model.apply`` jitted once per static (model, periodicity, compression): eager linen calls are slow."""
    return jax.jit(lambda params, x, ids: model.apply({"params": params}, x, ids, periodic=periodic,
                                                      compression=compression))


def load_run(workdir: str | Path, stage: str | None = None, step: int | None = None, *, mesh: Any = None) -> Run:
    """Restores the parameters of one stage of a run from ``workdir`` alone (its ``config.json`` and checkpoints).

    ``stage``: 'ae' or 'dyn' (default: 'dyn' when the workdir has dyn checkpoints, else 'ae'); ``step``: a
    checkpoint step (default: the latest). Only ``state.params`` is read (no optimiser state), into a 1-device mesh
    unless ``mesh`` is given. Raises FileNotFoundError naming the missing workdir, config or checkpoint.
    """
    import flax.linen as nn
    from tokpre import sharding as shd
    from tokpre.train import ae, common, dyn

    workdir = Path(workdir).absolute()
    if not workdir.is_dir():
        raise FileNotFoundError(f"load_run: workdir {workdir} does not exist")
    cfg = load_config(workdir)

    def has_ckpt(s: str) -> bool:
        d = workdir / s / "checkpoints"
        return d.is_dir() and any(p.name.isdigit() for p in d.iterdir())

    if stage is None:
        stage = "dyn" if has_ckpt("dyn") else "ae"
    if stage not in RUN_STAGES:
        raise ValueError(f"load_run: stage must be one of {RUN_STAGES}, found {stage!r}")
    ckpt_dir = workdir / stage / "checkpoints"
    if not has_ckpt(stage):
        raise FileNotFoundError(f"load_run: no {stage} checkpoint in {ckpt_dir} (run the '{stage}' stage of "
                                f"`python -m tokpre.main --workdir={workdir}` first)")
    ckpt = StageCheckpointer(ckpt_dir)
    try:
        steps = ckpt.all_steps()
        step = ckpt.latest_step() if step is None else int(step)
        if step not in steps:
            raise FileNotFoundError(f"load_run: no checkpoint for step {step} in {ckpt_dir}; found steps {steps}")
        if mesh is None:
            mesh = shd.make_mesh((1, 1, 1), jax.devices()[:1])
        if stage == "ae":
            model = common.tokeniser_from_config(cfg)
            init = ae.init_fn(model, cfg)
            comps = tuple(ae.compressions_of(cfg))
            dataset = str(cfg.ae.datasets[0])
        else:
            model = dyn.emulator_from_config(cfg)
            comp = dyn.compression_of(cfg)
            init = dyn.init_fn(model, cfg, comp)
            comps = (comp,)
            dataset = str(cfg.dyn.dataset)
        boxed = jax.eval_shape(init, jax.random.key(0))       # shapes only: nothing is initialised
        shardings = shd.params_shardings(boxed, mesh, shd.get_rules(cfg.mesh.rules))
        abstract = nn.unbox(boxed)
        check_tree_compatible(ckpt.stored_param_shapes(step), path_shapes(abstract),
                              what=f"checkpoint {ckpt_dir / str(step)}")
        params = ckpt.restore_params(step, abstract, shardings)
    finally:
        ckpt.close()

    run = Run(workdir=workdir, config=cfg, stage=stage, step=step, model=model, params=params, mesh=mesh,
              compression=comps[0], compressions=comps, dataset=dataset)
    try:
        from tokpre.data import well
        sp = well.WellSplit(cfg.data.well_base_path, dataset, "test")
        run.field_names = tuple(sp.field_names)
        run.field_ids = FieldVocab().ids(sp.field_names, int(cfg.model.tokeniser.vocab_size))
        run.periodic = common.periodic_of(sp.boundary)
    except (OSError, ValueError):
        pass   # data not reachable from here: the parameters are still usable with explicit ids / periodic
    return run
