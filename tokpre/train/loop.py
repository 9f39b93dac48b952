"""The host-side training loop shared by every stage: resume, step, log, evaluate, checkpoint.

Everything device-side is in the jitted ``step``; this loop only feeds batches, prints progress (steps/s, ETA,
loss), writes metrics (JSON lines + TensorBoard, process 0 only), checkpoints every ``ckpt_every`` steps and at
the end, and stops on non-finite losses before they can reach a checkpoint.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np
from absl import logging

from tokpre.checkpoint import StageCheckpointer
from tokpre.train.state import TrainState


class NonFiniteLossError(FloatingPointError):
    """Training produced a non-finite loss or gradient."""


class MetricsWriter:
    """JSON lines (``metrics.jsonl``) and TensorBoard events in a stage directory, written by process 0 only."""

    def __init__(self, stage_dir: Path):
        self.enabled = jax.process_index() == 0
        self.path = Path(stage_dir) / "metrics.jsonl"
        self._tb = None
        if self.enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            try:
                from tensorboardX import SummaryWriter
                self._tb = SummaryWriter(str(Path(stage_dir) / "tb"))
            except Exception as e:  # TensorBoard is a convenience; JSON lines are the record.
                logging.warning("TensorBoard events disabled: %s", e)

    def write(self, step: int, metrics: dict[str, Any], prefix: str = "train") -> None:
        if not self.enabled:
            return
        flat = {f"{prefix}/{k}": float(v) for k, v in metrics.items() if np.ndim(v) == 0}
        with self.path.open("a") as f:
            f.write(json.dumps({"step": int(step), "time": time.time(), **flat}) + "\n")
        if self._tb is not None:
            for k, v in flat.items():
                self._tb.add_scalar(k, v, int(step))
            self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def read_metrics(stage_dir: str | Path) -> list[dict]:
    p = Path(stage_dir) / "metrics.jsonl"
    if not p.exists():
        return []
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]


def _fmt_time(s: float) -> str:
    if not math.isfinite(s):
        return "?"
    s = int(s)
    return f"{s // 3600:d}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60:d}:{s % 60:02d}"


def _say(msg: str) -> None:
    if jax.process_index() == 0:
        print(msg, flush=True)


# Called after every completed step with the stage name and step number; tests replace it to simulate an
# interruption (e.g. a pre-empted job) at a chosen step.
def after_step_hook(name: str, step: int) -> None:
    return None


def run(*, name: str, stage_dir: Path, step_fn: Callable[[TrainState, dict], tuple[TrainState, dict]],
        state: TrainState, next_batch: Callable[[], dict], total_steps: int, ckpt: StageCheckpointer,
        data_iter: Any = None, meta: dict | None = None, log_every: int = 50, ckpt_every: int = 500,
        eval_every: int = 0, eval_fn: Callable[[TrainState], dict] | None = None) -> TrainState:
    """Trains from ``state.step`` to ``total_steps``.

    ``next_batch()`` returns a global batch (already sharded jax arrays). ``eval_fn(state)`` returns scalar
    metrics written under ``eval/``. Checkpoints include the data iterator so a resumed run sees the same data.
    """
    writer = MetricsWriter(stage_dir)
    start = int(jax.device_get(state.step))
    t0 = time.time()
    t_last, s_last = t0, start
    pending: list[dict] = []
    last_saved = ckpt.latest_step()

    def check_finite(st: TrainState, step: int) -> None:
        bad = int(jax.device_get(st.bad_steps))
        if bad:
            raise NonFiniteLossError(
                f"[{name}] {bad} step(s) up to step {step} produced a non-finite loss or gradient; their updates "
                f"were skipped and nothing after the last good checkpoint (step {last_saved}) was saved. "
                f"Lower the learning rate (config key {name}.optimizer.lr), enable gradient clipping "
                f"({name}.optimizer.grad_clip) or inspect the data; rerunning resumes from step {last_saved}.")

    try:
        for step in range(start + 1, total_steps + 1):
            batch = next_batch()
            state, metrics = step_fn(state, batch)
            pending.append(metrics)
            if step % log_every == 0 or step == total_steps:
                check_finite(state, step)
                host = jax.device_get(pending)
                pending = []
                avg = {k: float(np.mean([m[k] for m in host])) for k in host[-1]}
                now = time.time()
                sps = (step - s_last) / max(now - t_last, 1e-9)
                t_last, s_last = now, step
                eta = (total_steps - step) / sps if sps > 0 else float("inf")
                writer.write(step, {**avg, "steps_per_sec": sps})
                _say(f"[{name}] step {step}/{total_steps}  loss {avg['loss']:.4g}  {sps:.2f} steps/s  "
                     f"elapsed {_fmt_time(now - t0)}  ETA {_fmt_time(eta)}")
            if eval_fn is not None and eval_every and (step % eval_every == 0 or step == total_steps):
                ev = eval_fn(state)
                writer.write(step, ev, prefix="eval")
                _say(f"[{name}] eval @ {step}: " + "  ".join(f"{k} {v:.4g}" for k, v in ev.items()))
            if step % ckpt_every == 0 or step == total_steps:
                check_finite(state, step)
                ckpt.save(step, state, data_iter=data_iter, meta=meta)
                last_saved = step
            after_step_hook(name, step)
    finally:
        writer.close()
    return state
