"""tokpre's entry point: runs ``config.stages`` in order in one workdir.

    python -m tokpre.main --config=configs/ae_then_dyn.py --workdir=runs/quickstart
    python -m tokpre.main --config=configs/ae_then_dyn.py:paper --workdir=gs://... --config.dyn.steps=20000

Rerunning the same command resumes every stage from its last checkpoint; finished stages are skipped.
"""

from __future__ import annotations

from pathlib import Path

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from tokpre import sharding
from tokpre.config import sync_schedule

_CONFIG = config_flags.DEFINE_config_file("config", "configs/ae_then_dyn.py", "Experiment config file.")
_WORKDIR = flags.DEFINE_string("workdir", "runs/default", "Directory for checkpoints, metrics and reports.")

STAGES = ("ae", "dyn")


def run(config, workdir: str | Path) -> None:
    """Runs every stage of ``config.stages`` in ``workdir`` (usable from Python and tests)."""
    sync_schedule(config)
    sharding.maybe_initialize_distributed(config.get("distributed"))
    sharding.log_devices()
    workdir = Path(workdir).absolute()
    unknown = [s for s in config.stages if s not in STAGES]
    if unknown:
        raise ValueError(f"config key stages: unknown stage(s) {unknown}; expected a sequence of {STAGES}")
    mesh = sharding.make_mesh(config.mesh.shape)
    if jax.process_index() == 0:
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "config.json").write_text(config.to_json_best_effort(indent=2))
        print(f"tokpre: workdir {workdir}; {sharding.describe(mesh)}", flush=True)
    for stage in config.stages:
        if stage == "ae":
            from tokpre.train import ae
            ae.run_stage(config, workdir, mesh)
        elif stage == "dyn":
            from tokpre.train import dyn
            dyn.run_stage(config, workdir, mesh)


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    logging.set_verbosity(logging.WARNING)
    run(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
    app.run(main)
