"""Orbax checkpoints of a stage, and the AE -> emulator warm start.

A stage's checkpoints live in ``<workdir>/<stage>/checkpoints/<step>/`` with three items:
``state`` (the sharded ``TrainState``), ``data`` (the Grain iterator, one JSON per process) and ``meta``
(the field vocabulary and the compression settings). Orbax writes each step under a temporary name and renames
it when complete, so an interrupted save never leaves a half checkpoint that a resume would pick up.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import grain
import jax
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
    src_names = src.names
    for i, name in enumerate(dst.names[:rows]):
        if name in src:
            j = src.id(name) if name in src_names else i
            if j < rows and j != i:
                perm[i] = j
                changed = True
    return perm if changed else None


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())
