"""A 2-process x 4-device run on localhost through ``launch/local_multiprocess.sh`` (gloo CPU collectives).

Runs ``python -m tokpre.main`` with a tiny two-stage config (FSDP over all 8 devices, global batch 8: each process
reads its own share of the windows and contributes 4 rows of every global batch), checks that both stages finish
and write checkpoints and reports, then reruns with more steps and checks that both stages resume from their
checkpoints and reach the new final step.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LAUNCHER = REPO / "launch" / "local_multiprocess.sh"

CONFIG = '''
from tokpre.config import base_config


def get_config(arg=""):
    c = base_config()
    c.data.well_base_path = {base!r}
    c.data.batch_size = 8                 # 2 processes x 4 rows; FSDP over 8 devices
    c.data.generate_missing = False
    c.model.tokeniser.update(widths=(8, 16), latent_channels=8, depth=0, spatial_factors=(4,),
                             temporal_factors=(1,))
    c.model.processor.update(d_model=32, num_layers=1, num_heads=2, mlp_ratio=2)
    c.ae.update(steps=2, compressions=((1, 4),), eval_compressions=((1, 4),), log_every=1, ckpt_every=2,
                eval_batches=1)
    c.ae.optimizer.update(name="adamw", lr=1e-3, warmup_steps=1)
    c.dyn.update(steps=2, log_every=1, ckpt_every=2, eval_batches=1, rollout_max_steps=1, rollout_trajectories=1,
                 n_steps_input=2)
    c.dyn.optimizer.update(lr=1e-3, warmup_steps=1)
    c.mesh.shape = (1, -1, 1)
    c.mesh.rules = "fsdp"
    return c
'''


def _launch(cfg_path: Path, workdir: Path, *overrides: str) -> str:
    env = {**os.environ, "PYTHON": sys.executable, "NUM_PROCESSES": "2", "DEVICES_PER_PROCESS": "4",
           # Compiling dominates; cheap LLVM code generation keeps the test short (numerics unchanged).
           "XLA_FLAGS_EXTRA": "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"}
    env.pop("XLA_FLAGS", None)
    proc = subprocess.run(["bash", str(LAUNCHER), f"--config={cfg_path}", f"--workdir={workdir}", *overrides],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    if proc.returncode != 0:
        pytest.fail(f"local_multiprocess.sh failed with status {proc.returncode}:\n{out[-8000:]}")
    return proc.stdout


@pytest.mark.skipif(shutil.which("bash") is None, reason="launch/local_multiprocess.sh needs bash")
def test_two_processes_train_checkpoint_and_resume(tiny_data, tmp_path):
    base, _ = tiny_data
    cfg_path = tmp_path / "mp_config.py"
    cfg_path.write_text(CONFIG.format(base=str(base)))
    workdir = tmp_path / "run"

    out = _launch(cfg_path, workdir)
    assert "mesh {'data': 1, 'fsdp': 8, 'model': 1} over 8 devices (2 processes, this is process 0)" in out, out
    # Only process 0 prints: each progress line appears once.
    assert out.count("[ae] step 2/2") == 1 and out.count("[dyn] step 2/2") == 1, out
    assert "[dyn] tokeniser restored from" in out
    for stage in ("ae", "dyn"):
        assert (workdir / stage / "checkpoints" / "2").is_dir(), sorted((workdir / stage).rglob("*"))
    assert (workdir / "ae" / "reconstruction.json").exists() and (workdir / "dyn" / "rollout.json").exists()

    out = _launch(cfg_path, workdir, "--config.ae.steps=3", "--config.dyn.steps=3")
    assert "[ae] resumed from step 2" in out and "[ae] step 3/3" in out, out
    assert "[dyn] resumed from step 2" in out and "[dyn] step 3/3" in out, out
    assert "[ae] step 1/" not in out and "[dyn] step 1/" not in out and "tokeniser restored" not in out
    for stage in ("ae", "dyn"):
        assert (workdir / stage / "checkpoints" / "3").is_dir()
