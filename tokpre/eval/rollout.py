"""Autoregressive rollout (jitted ``lax.scan``, batched) and The Well-style rollout evaluation.

``rollout`` feeds a sliding window of the last ``Ti`` frames to a one-step model, appends its prediction and drops
the oldest frames, as The Well's trainer does (4 input steps -> 1 output step, up to 100 steps).
``rollout_eval`` scores a rollout with VRMSE per predicted step in physical units and reduces it over The Well's
time windows; ``format_rollout_table`` prints the result.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from tokpre.eval import metrics

StepFn = Callable[[Any, jax.Array], jax.Array]

__all__ = ["rollout", "rollout_eval", "format_rollout_table"]


@functools.partial(jax.jit, static_argnames=("step_fn", "n_steps", "frames_per_step"))
def _rollout_jit(step_fn: StepFn, params: Any, init_frames: jax.Array, n_steps: int,
                 frames_per_step: int) -> jax.Array:
    b, ti = init_frames.shape[:2]
    frame_shape = init_frames.shape[2:]  # (*N, C)
    expected = (b, frames_per_step) + tuple(frame_shape)

    def body(window: jax.Array, _: None) -> tuple[jax.Array, jax.Array]:
        # window: (B, Ti, *N, C)
        nxt = step_fn(params, window)  # (B, frames_per_step, *N, C)
        if tuple(nxt.shape) != expected:
            raise ValueError(
                f"tokpre/eval/rollout.py:rollout: step_fn returned shape {tuple(nxt.shape)}, expected {expected} "
                f"(B, frames_per_step, *N, C)"
            )
        nxt = nxt.astype(window.dtype)
        new_window = jnp.concatenate([window, nxt], axis=1)[:, -ti:]  # drop the oldest, append the prediction
        return new_window, nxt

    _, preds = jax.lax.scan(body, init_frames, None, length=n_steps)  # (n_steps, B, fps, *N, C)
    preds = jnp.moveaxis(preds, 0, 1)  # (B, n_steps, fps, *N, C)
    return preds.reshape((b, n_steps * frames_per_step) + tuple(frame_shape))


def rollout(step_fn: StepFn, params: Any, init_frames: jax.Array, n_steps: int, *,
            frames_per_step: int = 1) -> jax.Array:
    """Autoregressive rollout with a sliding input window.

    ``step_fn(params, window)`` maps ``window (B, Ti, *N, C)`` to the next frames ``(B, frames_per_step, *N, C)``;
    after each call the window drops its oldest ``frames_per_step`` frames and appends the prediction (it always
    holds the latest ``Ti`` frames). ``step_fn`` must be hashable (it is a static jit argument; pass the same
    function object to reuse the compiled rollout).

    init_frames: (B, Ti, *N, C) -> predictions (B, n_steps * frames_per_step, *N, C), the initial frames excluded.
    """
    init_frames = jnp.asarray(init_frames)
    if init_frames.ndim < 4:
        raise ValueError(
            f"tokpre/eval/rollout.py:rollout: init_frames must be (B, Ti, *N, C) with at least one spatial axis; "
            f"found shape {tuple(init_frames.shape)}"
        )
    if int(n_steps) < 1 or int(frames_per_step) < 1:
        raise ValueError(
            f"tokpre/eval/rollout.py:rollout: n_steps and frames_per_step must be >= 1; found n_steps={n_steps}, "
            f"frames_per_step={frames_per_step}"
        )
    return _rollout_jit(step_fn, params, init_frames, int(n_steps), int(frames_per_step))


def rollout_eval(step_fn: StepFn, params: Any, trajectories: jax.Array | np.ndarray, n_input: int,
                 denormalise_fn: Callable[[jax.Array], jax.Array], field_names: Sequence[str],
                 max_steps: int | None = None, *, frames_per_step: int = 1,
                 num_intervals: int = 5) -> dict[str, Any]:
    """Roll out from the first ``n_input`` frames of each trajectory and score VRMSE per predicted step.

    trajectories: (B, T, *N, C) normalised. The model predicts steps ``n_input .. n_input + T_pred - 1`` with
    ``T_pred = T - n_input`` (capped at ``max_steps``). Prediction and truth are both passed through
    ``denormalise_fn`` ((B, T_pred, *N, C) -> same) before the metric, as in The Well's validation.

    Returns a dict:
      - ``"vrmse"``: (T_pred, C) float64 numpy, batch-mean VRMSE per predicted step and field;
      - ``"field_names"``: list of the C names; ``"windows"``: The Well's windows ``well_time_windows(T_pred)``
        (0-based over predicted steps, empty ones dropped);
      - ``"window_means"``: (n_windows, C) mean VRMSE per window; ``"all_mean"``: (C,) mean over all steps;
      - ``"summary"``: ``metrics.summarise`` keys (``full_VRMSE_T=all``, ``<field>_VRMSE_T=a:b``, ...).
    """
    traj = jnp.asarray(trajectories)
    if traj.ndim < 4:
        raise ValueError(
            f"tokpre/eval/rollout.py:rollout_eval: trajectories must be (B, T, *N, C); found {tuple(traj.shape)}"
        )
    if traj.shape[-1] != len(field_names):
        raise ValueError(
            f"tokpre/eval/rollout.py:rollout_eval: trajectories have {traj.shape[-1]} channels, field_names has "
            f"{len(field_names)}: {list(field_names)}"
        )
    t_total = traj.shape[1]
    t_pred = t_total - int(n_input)
    if max_steps is not None:
        t_pred = min(t_pred, int(max_steps))
    if n_input < 1 or t_pred < 1:
        raise ValueError(
            f"tokpre/eval/rollout.py:rollout_eval: need 1 <= n_input < T and max_steps >= 1; found n_input="
            f"{n_input}, T={t_total}, max_steps={max_steps}"
        )
    n_calls = -(-t_pred // frames_per_step)
    pred = rollout(step_fn, params, traj[:, :n_input], n_calls, frames_per_step=frames_per_step)[:, :t_pred]
    truth = traj[:, n_input:n_input + t_pred]
    pred_phys = denormalise_fn(pred)  # (B, T_pred, *N, C)
    truth_phys = denormalise_fn(truth)
    v_btc = jax.jit(metrics.vrmse)(pred_phys, truth_phys)  # (B, T_pred, C)
    v_tc = metrics.reduce_batch(v_btc)  # (T_pred, C)
    windows = [w for w in metrics.well_time_windows(t_pred, num_intervals) if w[0] < w[1]]
    window_means = np.stack([v_tc[a:b].mean(axis=0) for a, b in windows])  # (n_windows, C)
    return {
        "vrmse": v_tc,
        "field_names": list(field_names),
        "windows": windows,
        "window_means": window_means,
        "all_mean": v_tc.mean(axis=0),
        "summary": metrics.summarise(v_btc, field_names, windows, metric_name="VRMSE"),
    }


def format_rollout_table(result: dict[str, Any], digits: int = 4) -> str:
    """Plain-text table of a ``rollout_eval`` result: one row per time window (plus ``all``), one column per
    field plus ``mean`` (the mean over fields, The Well's ``full``)."""
    names = list(result["field_names"])
    rows = [(f"{a}:{b}", np.asarray(m)) for (a, b), m in zip(result["windows"], result["window_means"])]
    rows.append(("all", np.asarray(result["all_mean"])))
    header = ["window"] + names + ["mean"]
    body = [[label] + [f"{v:.{digits}f}" for v in vals] + [f"{vals.mean():.{digits}f}"] for label, vals in rows]
    widths = [max(len(r[i]) for r in [header] + body) for i in range(len(header))]
    lines = ["  ".join(cell.rjust(w) for cell, w in zip(r, widths)) for r in [header] + body]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
