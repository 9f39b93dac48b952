"""Tests for tokpre/eval/rollout.py: analytic rollouts, sliding-window semantics, shapes, evaluation."""

import jax.numpy as jnp
import numpy as np
import pytest

from tokpre.eval import metrics as M
from tokpre.eval.rollout import format_rollout_table, rollout, rollout_eval


def decay_shift_step(params, window):
    """x_{n+1} = a * roll(x_n, 1 along the first spatial axis). window: (B, Ti, *N, C) -> (B, 1, *N, C)."""
    return params["a"] * jnp.roll(window[:, -1:], 1, axis=2)


def window_mean_step(params, window):
    """Next frame = mean of the whole input window. window: (B, Ti, *N, C) -> (B, 1, *N, C)."""
    return jnp.mean(window, axis=1, keepdims=True)


def two_frame_step(params, window):
    """Predict 2 frames: [w[-1] + w[0], w[-2] * 2 - w[0]] (depends on the window order and contents)."""
    f0 = window[:, -1:] + window[:, :1]
    f1 = window[:, -2:-1] * 2.0 - window[:, :1]
    return jnp.concatenate([f0, f1], axis=1)


def shift_step(params, window):
    """Exact periodic advection by one pixel per step along the first spatial axis."""
    return jnp.roll(window[:, -1:], 1, axis=2)


def test_rollout_reproduces_analytic_decay_and_shift():
    rng = np.random.default_rng(0)
    x0 = rng.normal(size=(2, 1, 8, 6, 3)).astype(np.float32)
    a = 0.9
    out = np.asarray(rollout(decay_shift_step, {"a": jnp.float32(a)}, jnp.asarray(x0), 7))
    assert out.shape == (2, 7, 8, 6, 3)
    for n in range(1, 8):
        expect = a ** n * np.roll(x0[:, 0], n, axis=1)
        np.testing.assert_allclose(out[:, n - 1], expect, rtol=1e-5, atol=1e-6)


def test_sliding_window_semantics_window_mean():
    # scalar per frame on a 2x2 grid; reference built with a python list as the window
    init = np.array([1.0, 2.0, 3.0], np.float32)
    frames = np.broadcast_to(init.reshape(1, 3, 1, 1, 1), (2, 3, 2, 2, 1)).copy()
    frames[1] *= -2.0  # second batch element differs
    out = np.asarray(rollout(window_mean_step, None, jnp.asarray(frames), 6))
    for b, scale in [(0, 1.0), (1, -2.0)]:
        window = list(init * scale)
        expect = []
        for _ in range(6):
            nxt = sum(window) / len(window)
            expect.append(nxt)
            window = window[1:] + [nxt]
        np.testing.assert_allclose(out[b, :, 0, 0, 0], expect, rtol=1e-6)
        np.testing.assert_allclose(out[b], np.broadcast_to(out[b, :, :1, :1], out[b].shape))
    # first prediction is (1+2+3)/3 = 2, second (2+3+2)/3 = 7/3
    assert out[0, 0, 0, 0, 0] == pytest.approx(2.0)
    assert out[0, 1, 0, 0, 0] == pytest.approx(7 / 3)


@pytest.mark.parametrize("ti", [3, 2])
def test_frames_per_step_two(ti):
    rng = np.random.default_rng(1)
    init = rng.normal(size=(1, ti, 1, 1)).astype(np.float32)  # (B, Ti, N=1, C=1), 1D grid
    out = np.asarray(rollout(two_frame_step, None, jnp.asarray(init), 4, frames_per_step=2))
    assert out.shape == (1, 8, 1, 1)
    window = list(init[0, :, 0, 0])
    expect = []
    for _ in range(4):
        f0 = window[-1] + window[0]
        f1 = window[-2] * 2.0 - window[0]
        expect += [f0, f1]
        window = (window + [f0, f1])[-ti:]
    np.testing.assert_allclose(out[0, :, 0, 0], expect, rtol=1e-5, atol=1e-6)


def test_rollout_shapes_2d_3d_and_bad_step():
    x2 = jnp.zeros((3, 4, 8, 8, 2))
    assert rollout(window_mean_step, None, x2, 5).shape == (3, 5, 8, 8, 2)
    x3 = jnp.ones((1, 2, 4, 4, 4, 1))
    out3 = rollout(window_mean_step, None, x3, 3)
    assert out3.shape == (1, 3, 4, 4, 4, 1)
    np.testing.assert_allclose(out3, 1.0)
    with pytest.raises(ValueError, match="frames_per_step"):
        rollout(window_mean_step, None, x2, 2, frames_per_step=2)  # step returns 1 frame, 2 expected
    with pytest.raises(ValueError, match="n_steps"):
        rollout(window_mean_step, None, x2, 0)


def _advected_trajectories(b=2, t=14, n=16, c=2, seed=0):
    rng = np.random.default_rng(seed)
    x0 = rng.normal(size=(b, n, n, c)).astype(np.float32)
    return np.stack([np.roll(x0, s, axis=1) for s in range(t)], axis=1)  # (B, T, N, N, C)


def test_rollout_eval_exact_model_has_zero_error():
    traj = _advected_trajectories()
    res = rollout_eval(shift_step, None, traj, n_input=4, denormalise_fn=lambda x: x * 3.0 + 1.0,
                       field_names=["u", "v"])
    assert res["vrmse"].shape == (10, 2)
    assert np.max(res["vrmse"]) < 1e-5
    assert res["windows"] == [(0, 1), (1, 3), (3, 5), (5, 10)]  # T=10: the empty 1:1 window is dropped
    assert res["summary"]["full_VRMSE_T=all"] < 1e-5


def test_rollout_eval_values_denormalised_windows_and_table():
    traj = _advected_trajectories(seed=3)
    denorm = lambda x: jnp.exp(0.5 * x)  # nonlinear, so skipping it would change VRMSE
    res = rollout_eval(window_mean_step, None, traj, n_input=4, denormalise_fn=denorm, field_names=["u", "v"],
                       max_steps=6)
    pred = np.asarray(rollout(window_mean_step, None, jnp.asarray(traj[:, :4]), 6))
    truth = traj[:, 4:10]
    expect_btc = np.asarray(M.vrmse(denorm(jnp.asarray(pred)), denorm(jnp.asarray(truth))))
    np.testing.assert_allclose(res["vrmse"], expect_btc.mean(axis=0), rtol=1e-5)
    not_denorm = np.asarray(M.vrmse(jnp.asarray(pred), jnp.asarray(truth))).mean(axis=0)
    assert not np.allclose(res["vrmse"], not_denorm, rtol=1e-3)
    assert res["windows"] == [(0, 1), (1, 2), (2, 3), (3, 6)]  # well_time_windows(6)
    np.testing.assert_allclose(res["window_means"][3], res["vrmse"][3:6].mean(axis=0))
    assert res["summary"]["u_VRMSE_T=3:6"] == pytest.approx(res["vrmse"][3:6, 0].mean())
    assert res["summary"]["full_VRMSE_T=all"] == pytest.approx(res["vrmse"].mean())
    table = format_rollout_table(res)
    lines = table.splitlines()
    assert lines[0].split() == ["window", "u", "v", "mean"]
    assert [ln.split()[0] for ln in lines[2:]] == ["0:1", "1:2", "2:3", "3:6", "all"]
    assert lines[-1].split()[-1] == f"{res['vrmse'].mean():.4f}"


def test_rollout_eval_frames_per_step_and_errors():
    traj = _advected_trajectories(t=9)

    def shift2(params, window):
        last = window[:, -1:]
        return jnp.concatenate([jnp.roll(last, 1, axis=2), jnp.roll(last, 2, axis=2)], axis=1)

    res = rollout_eval(shift2, None, traj, n_input=2, denormalise_fn=lambda x: x, field_names=["u", "v"],
                       frames_per_step=2)
    assert res["vrmse"].shape == (7, 2)  # 4 calls = 8 frames, truncated to the 7 available
    assert np.max(res["vrmse"]) < 1e-5
    with pytest.raises(ValueError, match="field_names"):
        rollout_eval(shift_step, None, traj, 2, lambda x: x, ["u"])
    with pytest.raises(ValueError, match="n_input"):
        rollout_eval(shift_step, None, traj, 9, lambda x: x, ["u", "v"])
