"""The Well's evaluation metrics in JAX, plus a normalised error power spectrum (NEPS) and The Well's reductions.

Every metric takes a prediction ``x`` and a target ``y`` shaped ``(B, T, *spatial, C)`` (channel-last; ``spatial``
is the ``n_spatial_dims`` axes just before ``C``, default ``x.ndim - 3``) and returns ``(B, T, C)``. The
definitions and epsilons (1e-7) are those of ``the_well/benchmark/metrics/`` (see
/work/shared/reference/the_well.md section 3): standard deviations are the unbiased (N-1) estimator, the Pearson
covariance is biased, and the binned spectral MSE uses The Well's three log-spaced bands.

Everything here is jit-able: wavenumber bins depend only on static shapes and are built with numpy at trace time.

Reductions follow The Well's trainer: ``(B, T, C)`` -> mean over the batch -> ``(T, C)``; ``T=all`` / ``T=a:b`` are
means over (a window of) time; ``full`` is the mean over fields. ``summarise`` turns metrics into a flat dict with
The Well's log keys (``full_VRMSE_T=all``, ``<field>_VRMSE_T=all``, ``full_VRMSE_T=a:b``).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

EPS = 1e-7

__all__ = [
    "EPS",
    "mse", "mae", "rmse", "nmse", "nrmse", "vmse", "vrmse", "nmae", "linf", "pearson_r",
    "isotropic_wavenumber", "well_spectral_band_edges", "binned_spectral_mse",
    "shell_wavenumber", "default_shell_edges", "shell_power", "neps", "neps_average", "neps_to_well_bands",
    "well_time_windows", "parse_window", "reduce_batch", "summarise", "evaluate_all", "WELL_VALIDATION_METRICS",
]


# ---------------------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------------------


def _spatial_axes(x: jax.Array, n_spatial_dims: int | None) -> tuple[int, ...]:
    """The spatial axes ``range(-D-1, -1)`` of a ``(B, T, *spatial, C)`` array (The Well's convention)."""
    d = x.ndim - 3 if n_spatial_dims is None else int(n_spatial_dims)
    if d < 1 or d > x.ndim - 1:
        raise ValueError(
            f"tokpre/eval/metrics.py: n_spatial_dims must be in [1, {x.ndim - 1}] for an array of shape "
            f"{tuple(x.shape)} (expected (B, T, *spatial, C)); found n_spatial_dims={n_spatial_dims} (-> {d})"
        )
    return tuple(range(-d - 1, -1))


def _check_pair(x: jax.Array, y: jax.Array, name: str) -> None:
    if tuple(x.shape) != tuple(y.shape):
        raise ValueError(
            f"tokpre/eval/metrics.py:{name}: prediction and target shapes differ: expected {tuple(y.shape)} "
            f"(target), found {tuple(x.shape)} (prediction)"
        )


def _unbiased_var(y: jax.Array, axes: tuple[int, ...]) -> jax.Array:
    """torch.std(y, dim=axes) ** 2 (unbiased, N-1)."""
    return jnp.var(y, axis=axes, ddof=1)


# ---------------------------------------------------------------------------------------------------------------
# spatial metrics: (B, T, *spatial, C) -> (B, T, C)
# ---------------------------------------------------------------------------------------------------------------


def mse(x: jax.Array, y: jax.Array, n_spatial_dims: int | None = None) -> jax.Array:
    """Mean squared error over space: ``mean_space (x-y)^2``. x, y: (B, T, *N, C) -> (B, T, C)."""
    _check_pair(x, y, "mse")
    return jnp.mean((x - y) ** 2, axis=_spatial_axes(x, n_spatial_dims))


def mae(x: jax.Array, y: jax.Array, n_spatial_dims: int | None = None) -> jax.Array:
    """Mean absolute error over space: ``mean_space |x-y|``. x, y: (B, T, *N, C) -> (B, T, C)."""
    _check_pair(x, y, "mae")
    return jnp.mean(jnp.abs(x - y), axis=_spatial_axes(x, n_spatial_dims))


def rmse(x: jax.Array, y: jax.Array, n_spatial_dims: int | None = None) -> jax.Array:
    """Root mean squared error: ``sqrt(MSE)``. x, y: (B, T, *N, C) -> (B, T, C)."""
    return jnp.sqrt(mse(x, y, n_spatial_dims))


def nmse(x: jax.Array, y: jax.Array, n_spatial_dims: int | None = None, eps: float = EPS,
         norm_mode: str = "norm") -> jax.Array:
    """Normalised MSE: ``MSE / (mean_space y^2 + eps)`` ("norm") or ``MSE / (std_space(y)^2 + eps)`` ("std",
    unbiased std). x, y: (B, T, *N, C) -> (B, T, C)."""
    axes = _spatial_axes(x, n_spatial_dims)
    if norm_mode == "norm":
        norm = jnp.mean(y ** 2, axis=axes)
    elif norm_mode == "std":
        norm = _unbiased_var(y, axes)
    else:
        raise ValueError(f"tokpre/eval/metrics.py:nmse: norm_mode must be 'norm' or 'std', found {norm_mode!r}")
    return mse(x, y, n_spatial_dims) / (norm + eps)


def nrmse(x: jax.Array, y: jax.Array, n_spatial_dims: int | None = None, eps: float = EPS,
          norm_mode: str = "norm") -> jax.Array:
    """Normalised RMSE: ``sqrt(NMSE)``. x, y: (B, T, *N, C) -> (B, T, C)."""
    return jnp.sqrt(nmse(x, y, n_spatial_dims, eps=eps, norm_mode=norm_mode))


def vmse(x: jax.Array, y: jax.Array, n_spatial_dims: int | None = None, eps: float = EPS) -> jax.Array:
    """Variance-scaled MSE: ``MSE / (std_space(y)^2 + eps)``, unbiased std. x, y: (B, T, *N, C) -> (B, T, C)."""
    return nmse(x, y, n_spatial_dims, eps=eps, norm_mode="std")


def vrmse(x: jax.Array, y: jax.Array, n_spatial_dims: int | None = None, eps: float = EPS) -> jax.Array:
    """Variance-scaled RMSE (The Well's headline metric): ``sqrt(MSE / (std_space(y)^2 + eps))``, unbiased std.

    Predicting the target's spatial mean gives ``sqrt((N-1)/N)`` (N = number of grid points), slightly below 1.
    x, y: (B, T, *N, C) -> (B, T, C).
    """
    return jnp.sqrt(vmse(x, y, n_spatial_dims, eps=eps))


def nmae(x: jax.Array, y: jax.Array, n_spatial_dims: int | None = None, eps: float = EPS) -> jax.Array:
    """Normalised MAE: ``MAE / (mean_space |y| + eps)``. x, y: (B, T, *N, C) -> (B, T, C)."""
    axes = _spatial_axes(x, n_spatial_dims)
    return mae(x, y, n_spatial_dims) / (jnp.mean(jnp.abs(y), axis=axes) + eps)


def linf(x: jax.Array, y: jax.Array, n_spatial_dims: int | None = None) -> jax.Array:
    """L-infinity error: ``max_space |x-y|``. x, y: (B, T, *N, C) -> (B, T, C)."""
    _check_pair(x, y, "linf")
    return jnp.max(jnp.abs(x - y), axis=_spatial_axes(x, n_spatial_dims))


def pearson_r(x: jax.Array, y: jax.Array, n_spatial_dims: int | None = None, eps: float = EPS) -> jax.Array:
    """Pearson correlation over space as The Well computes it: ``cov / (std_x * std_y + eps)`` with a biased
    covariance ``mean((x - x̄)(y - ȳ))`` and unbiased stds (so a perfect prediction gives (N-1)/N, not 1).
    x, y: (B, T, *N, C) -> (B, T, C)."""
    _check_pair(x, y, "pearson_r")
    axes = _spatial_axes(x, n_spatial_dims)
    xc = x - jnp.mean(x, axis=axes, keepdims=True)
    yc = y - jnp.mean(y, axis=axes, keepdims=True)
    cov = jnp.mean(xc * yc, axis=axes)
    sx = jnp.std(x, axis=axes, ddof=1)
    sy = jnp.std(y, axis=axes, ddof=1)
    return cov / (sx * sy + eps)


# ---------------------------------------------------------------------------------------------------------------
# spectra
# ---------------------------------------------------------------------------------------------------------------


def isotropic_wavenumber(spatial_shape: Sequence[int]) -> np.ndarray:
    """|k| in radians per pixel, ``sqrt(sum_i (2 pi fftfreq(N_i))^2)``, shape ``spatial_shape``, float32 as The
    Well's torch code (so bucketing ties resolve identically). Max is ``pi sqrt(D)`` for even N_i."""
    d = len(spatial_shape)
    k2 = np.zeros(tuple(spatial_shape), dtype=np.float32)
    for i, n in enumerate(spatial_shape):
        wn = (2 * np.pi * np.fft.fftfreq(n, d=1.0).astype(np.float32)).astype(np.float32)
        k2 = k2 + np.moveaxis(wn.reshape((n,) + (1,) * (d - 1)), 0, i) ** 2
    return np.sqrt(k2).astype(np.float32)


def well_spectral_band_edges(spatial_shape: Sequence[int]) -> np.ndarray:
    """The Well's default band edges for ``binned_spectral_mse`` (rad/pixel, float32, 4 edges -> 3 bands):
    ``logspace(log10(2 pi / max N), log10(pi sqrt(D) + 1e-6), 4)`` with ``edges[0] = 0``."""
    d = len(spatial_shape)
    edges = np.logspace(np.log10(2 * np.pi / max(spatial_shape)), np.log10(np.pi * np.sqrt(d) + 1e-6), 4)
    edges = edges.astype(np.float32)
    edges[0] = 0.0
    return edges


def _bucketize(k: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """``torch.bucketize(k, edges, right=True) - 1``: bin b holds ``edges[b] <= k < edges[b+1]``; -1 below."""
    return np.searchsorted(np.asarray(edges), k, side="right") - 1


def _segment_power(x_hat: jax.Array, axes: tuple[int, ...], ids: np.ndarray, n_bins: int) -> jax.Array:
    """Sum of |X|^2 per bin. x_hat: (B, T, *N, C) complex, ids: (*N,) int with values in [0, n_bins] (n_bins =
    dropped) -> (B, T, n_bins, C) float."""
    p = jnp.abs(x_hat) ** 2
    lead = p.shape[: axes[0] + p.ndim]
    c = p.shape[-1]
    p = p.reshape(lead + (-1, c))  # (..., Nflat, C)
    p = jnp.moveaxis(p, -2, 0)  # (Nflat, ..., C)
    summed = jax.ops.segment_sum(p, jnp.asarray(ids.reshape(-1)), num_segments=n_bins + 1)
    return jnp.moveaxis(summed[:n_bins], 0, -2)  # (..., n_bins, C)


def binned_spectral_mse(x: jax.Array, y: jax.Array, n_spatial_dims: int | None = None,
                        bins: np.ndarray | None = None) -> dict[str, jax.Array]:
    """The Well's ``binned_spectral_mse``: error energy (and error / target energy) per wavenumber band.

    ``mse_per_bin[b] = (sum_{k in b} |FFT(x-y)|^2 / (count_b + 1e-7)) * count_b / N^2`` with N the number of grid
    points; by Parseval the bands sum to the spatial MSE. ``nmse_per_bin[b] = mse_per_bin[b] / (energy_b(y) +
    1e-7)``. ``bins`` are edges in rad/pixel (default ``well_spectral_band_edges``); ``len(bins) - 1`` bands, the
    region ``k >= bins[-1]`` being dropped as The Well does.

    x, y: (B, T, *N, C) -> {"spectral_error_mse_per_bin_{i}": (B, T, C), "spectral_error_nmse_per_bin_{i}": ...}.
    """
    _check_pair(x, y, "binned_spectral_mse")
    axes = _spatial_axes(x, n_spatial_dims)
    spatial_shape = tuple(x.shape[a] for a in axes)
    edges = well_spectral_band_edges(spatial_shape) if bins is None else np.asarray(bins, dtype=np.float32)
    n_bands = len(edges) - 1
    ids = _bucketize(isotropic_wavenumber(spatial_shape), edges)
    ids = np.where((ids < 0) | (ids >= n_bands), n_bands, ids)  # out of range -> dropped segment
    counts = np.bincount(ids.reshape(-1), minlength=n_bands + 1)[:n_bands].astype(np.float64)
    n_points = float(np.prod(spatial_shape))
    # sum / (count + eps) * count / N^2, folded into one static factor per band.
    factor = jnp.asarray((counts / (counts + EPS)) / n_points ** 2, dtype=jnp.float32)[:, None]  # (n_bands, 1)
    err = _segment_power(jnp.fft.fftn(x - y, axes=axes), axes, ids, n_bands) * factor  # (B, T, n_bands, C)
    tgt = _segment_power(jnp.fft.fftn(y, axes=axes), axes, ids, n_bands) * factor
    nmse_b = err / (tgt + EPS)
    out = {f"spectral_error_mse_per_bin_{i}": err[..., i, :] for i in range(n_bands)}
    out |= {f"spectral_error_nmse_per_bin_{i}": nmse_b[..., i, :] for i in range(n_bands)}
    return out


def shell_wavenumber(spatial_shape: Sequence[int]) -> np.ndarray:
    """|k| in index units (cycles per domain along each axis), ``sqrt(sum_i (N_i fftfreq(N_i))^2)``; float64,
    shape ``spatial_shape``."""
    d = len(spatial_shape)
    k2 = np.zeros(tuple(spatial_shape), dtype=np.float64)
    for i, n in enumerate(spatial_shape):
        wn = np.fft.fftfreq(n, d=1.0 / n)
        k2 = k2 + np.moveaxis(wn.reshape((n,) + (1,) * (d - 1)), 0, i) ** 2
    return np.sqrt(k2)


def default_shell_edges(spatial_shape: Sequence[int]) -> np.ndarray:
    """Edges of the default NEPS shells: one shell per integer |k| = 0..min(N)//2 (index units), i.e. edges
    ``s - 0.5 .. s + 0.5``. Shape ``(min(N)//2 + 2,)``."""
    kmax = min(spatial_shape) // 2
    return np.arange(kmax + 2, dtype=np.float64) - 0.5


def shell_power(x: jax.Array, n_spatial_dims: int | None = None,
                shell_edges: np.ndarray | None = None) -> tuple[jax.Array, np.ndarray]:
    """Spectral energy per isotropic shell: ``sum_{edges[s] <= |k| < edges[s+1]} |FFT(x)|^2 / N^2`` (so the
    shells sum to ``mean_space x^2`` when they cover every mode). ``|k|`` in index units (``shell_wavenumber``);
    modes outside ``[edges[0], edges[-1])`` (e.g. the corners beyond N/2) are left out.

    x: (B, T, *N, C) -> (power (B, T, n_shells, C), centres (n_shells,) midpoints of the edges).
    """
    axes = _spatial_axes(x, n_spatial_dims)
    spatial_shape = tuple(x.shape[a] for a in axes)
    edges = default_shell_edges(spatial_shape) if shell_edges is None else np.asarray(shell_edges, np.float64)
    if edges.ndim != 1 or len(edges) < 2 or np.any(np.diff(edges) <= 0):
        raise ValueError(
            "tokpre/eval/metrics.py:shell_power: shell_edges must be a strictly increasing 1-D array of at least "
            f"2 edges; found {edges!r}"
        )
    n_shells = len(edges) - 1
    ids = _bucketize(shell_wavenumber(spatial_shape), edges)
    ids = np.where((ids < 0) | (ids >= n_shells), n_shells, ids)
    n_points = float(np.prod(spatial_shape))
    power = _segment_power(jnp.fft.fftn(x, axes=axes), axes, ids, n_shells) / n_points ** 2
    centres = 0.5 * (edges[:-1] + edges[1:])
    return power, centres


def neps(x: jax.Array, y: jax.Array, n_spatial_dims: int | None = None, shell_edges: np.ndarray | None = None,
         eps: float = EPS) -> tuple[jax.Array, np.ndarray]:
    """Normalised error power spectrum: error energy / target energy per isotropic wavenumber shell,
    ``shell_power(x - y) / (shell_power(y) + eps)``. Default shells: integer |k| = 0..min(N)//2 in index units
    (cycles per domain); pass ``shell_edges`` (index units) for other bins.

    x, y: (B, T, *N, C) -> (neps (B, T, n_shells, C), centres (n_shells,) in index units).
    """
    _check_pair(x, y, "neps")
    err, centres = shell_power(x - y, n_spatial_dims, shell_edges)
    tgt, _ = shell_power(y, n_spatial_dims, shell_edges)
    return err / (tgt + eps), centres


def neps_average(neps_btkc: jax.Array, keep_channels: bool = False) -> jax.Array:
    """Average NEPS over batch, time and (unless ``keep_channels``) channels.
    neps_btkc: (B, T, n_shells, C) -> (n_shells,) or (n_shells, C)."""
    if neps_btkc.ndim != 4:
        raise ValueError(
            "tokpre/eval/metrics.py:neps_average: expected NEPS of shape (B, T, n_shells, C), found "
            f"{tuple(neps_btkc.shape)}"
        )
    m = jnp.mean(neps_btkc, axis=(0, 1))
    return m if keep_channels else jnp.mean(m, axis=-1)


def neps_to_well_bands(neps_values: jax.Array, centres: np.ndarray, spatial_shape: Sequence[int],
                       target_power: jax.Array | None = None, eps: float = EPS) -> jax.Array:
    """Reduce fine NEPS shells to The Well's three ``binned_spectral_mse`` bands.

    Each shell is assigned to a band by its centre converted to rad/pixel (``2 pi centre / max(N)``, the Well's
    wavenumber for the longest axis) and bucketed with ``well_spectral_band_edges``. Without ``target_power`` the
    band value is the plain mean of its shells' NEPS. With ``target_power`` (``shell_power(y)``, same shape as
    ``neps_values``) it is the energy-weighted ratio ``sum(neps * P_y) / (sum P_y + eps)`` = error energy / target
    energy in the band, i.e. The Well's ``spectral_error_nmse_per_bin`` up to shells straddling a band edge.
    Bands with no shell are NaN.

    neps_values: (..., n_shells, C) -> (..., 3, C).
    """
    centres = np.asarray(centres, dtype=np.float64)
    if neps_values.shape[-2] != len(centres):
        raise ValueError(
            f"tokpre/eval/metrics.py:neps_to_well_bands: neps_values has {neps_values.shape[-2]} shells on axis -2, "
            f"centres has {len(centres)}"
        )
    edges = well_spectral_band_edges(spatial_shape).astype(np.float64)
    k_rad = 2 * np.pi * centres / max(spatial_shape)
    band = _bucketize(k_rad, edges)
    out = []
    for b in range(len(edges) - 1):
        sel = np.nonzero(band == b)[0]
        if len(sel) == 0:
            out.append(jnp.full(neps_values.shape[:-2] + neps_values.shape[-1:], jnp.nan, neps_values.dtype))
            continue
        v = jnp.take(neps_values, jnp.asarray(sel), axis=-2)
        if target_power is None:
            out.append(jnp.mean(v, axis=-2))
        else:
            w = jnp.take(target_power, jnp.asarray(sel), axis=-2)
            out.append(jnp.sum(v * w, axis=-2) / (jnp.sum(w, axis=-2) + eps))
    return jnp.stack(out, axis=-2)


# ---------------------------------------------------------------------------------------------------------------
# reductions (host side)
# ---------------------------------------------------------------------------------------------------------------


def well_time_windows(n_steps: int, num_intervals: int = 5) -> list[tuple[int, int]]:
    """The Well trainer's rollout time windows over ``n_steps`` predicted steps (0-based, end exclusive):
    boundaries ``[0] + [int(exp(u)) for u in linspace(0, ln T, min(T, num_intervals))]``, consecutive pairs.

    Float truncation is reproduced (T=50 ends at 49). Degenerate empty windows (a == b, e.g. T=10 gives 1:1) are
    kept in the list; ``summarise`` skips them.
    """
    if n_steps < 1:
        raise ValueError(f"tokpre/eval/metrics.py:well_time_windows: need n_steps >= 1, found {n_steps}")
    us = np.linspace(0, np.log(n_steps), min(n_steps, num_intervals))
    bounds = [0] + [int(np.exp(u)) for u in us]
    return [(bounds[i], bounds[i + 1]) for i in range(len(bounds) - 1)]


def parse_window(w: str | tuple[int, int]) -> tuple[int, int]:
    """``"a:b"`` or ``(a, b)`` -> ``(a, b)`` (0-based, end exclusive)."""
    if isinstance(w, str):
        parts = w.split(":")
        if len(parts) != 2:
            raise ValueError(f"tokpre/eval/metrics.py:parse_window: expected 'a:b', found {w!r}")
        return int(parts[0]), int(parts[1])
    a, b = w
    return int(a), int(b)


def reduce_batch(metric_btc: jax.Array | np.ndarray) -> np.ndarray:
    """Mean over the batch (The Well's per-batch reduction). (B, T, C) -> (T, C) float64 numpy."""
    m = np.asarray(metric_btc, dtype=np.float64)
    if m.ndim != 3:
        raise ValueError(f"tokpre/eval/metrics.py:reduce_batch: expected (B, T, C), found shape {m.shape}")
    return m.mean(axis=0)


def summarise(metric_btc: jax.Array | np.ndarray | Mapping[str, jax.Array | np.ndarray],
              field_names: Sequence[str], windows: str | Sequence[str | tuple[int, int]] | None = None,
              metric_name: str = "VRMSE") -> dict[str, float]:
    """Reduce ``(B, T, C)`` metrics to The Well's log keys.

    Produces ``<field>_<metric>_T=all`` (mean over batch then time), ``full_<metric>_T=all`` (mean over fields of
    those), and for each window ``a:b`` the same two with ``T=a:b`` (time slice ``[a, b)``). ``windows`` is None
    (only ``T=all``), ``"well"`` (``well_time_windows(T)``) or a list of ``"a:b"`` / ``(a, b)``; empty windows
    (a == b) are skipped. ``metric_btc`` may be a dict ``{metric_name: (B, T, C)}`` (e.g. ``evaluate_all``'s
    output), in which case every entry is summarised with its own name.
    """
    if isinstance(metric_btc, Mapping):
        out: dict[str, float] = {}
        for name, m in metric_btc.items():
            out |= summarise(m, field_names, windows, metric_name=name)
        return out
    tc = reduce_batch(metric_btc)  # (T, C)
    n_t, n_c = tc.shape
    if len(field_names) != n_c:
        raise ValueError(
            f"tokpre/eval/metrics.py:summarise: metric {metric_name} has {n_c} channels, field_names has "
            f"{len(field_names)}: {list(field_names)}"
        )
    if windows is None:
        wins: list[tuple[int, int]] = []
    elif isinstance(windows, str):
        if windows != "well":
            raise ValueError(f"tokpre/eval/metrics.py:summarise: windows must be None, 'well' or a list; "
                             f"found {windows!r}")
        wins = well_time_windows(n_t)
    else:
        wins = [parse_window(w) for w in windows]
    out = {}
    per_field = tc.mean(axis=0)
    for c, f in enumerate(field_names):
        out[f"{f}_{metric_name}_T=all"] = float(per_field[c])
    out[f"full_{metric_name}_T=all"] = float(tc.mean(axis=1).mean())
    for a, b in wins:
        if not (0 <= a <= b <= n_t):
            raise ValueError(
                f"tokpre/eval/metrics.py:summarise: window {a}:{b} outside the {n_t} time steps of {metric_name}"
            )
        if a == b:
            continue
        sl = tc[a:b]
        for c, f in enumerate(field_names):
            out[f"{f}_{metric_name}_T={a}:{b}"] = float(sl[:, c].mean())
        out[f"full_{metric_name}_T={a}:{b}"] = float(sl.mean(axis=1).mean())
    return out


# The Well's validation suite (metrics/__init__.py), by log name.
WELL_VALIDATION_METRICS = ("RMSE", "NRMSE", "LInfinity", "VRMSE", "binned_spectral_mse", "PearsonR")


def evaluate_all(pred: jax.Array, target: jax.Array, field_names: Sequence[str],
                 n_spatial_dims: int | None = None) -> dict[str, jax.Array]:
    """The Well's validation suite on physical-unit fields, per (B, T, C).

    pred, target: (B, T, *N, C) -> {"RMSE", "NRMSE", "LInfinity", "VRMSE", "PearsonR",
    "spectral_error_mse_per_bin_{0,1,2}", "spectral_error_nmse_per_bin_{0,1,2}"}: each (B, T, C). Pass the result
    to ``summarise(result, field_names, windows)`` for The Well's log keys.
    """
    if pred.shape[-1] != len(field_names):
        raise ValueError(
            f"tokpre/eval/metrics.py:evaluate_all: prediction has {pred.shape[-1]} channels, field_names has "
            f"{len(field_names)}: {list(field_names)}"
        )
    return _evaluate_all_jit(pred, target, n_spatial_dims)


@functools.partial(jax.jit, static_argnums=2)
def _evaluate_all_jit(pred: jax.Array, target: jax.Array, n_spatial_dims: int | None) -> dict[str, jax.Array]:
    out = {
        "RMSE": rmse(pred, target, n_spatial_dims),
        "NRMSE": nrmse(pred, target, n_spatial_dims),
        "LInfinity": linf(pred, target, n_spatial_dims),
        "VRMSE": vrmse(pred, target, n_spatial_dims),
    }
    out |= binned_spectral_mse(pred, target, n_spatial_dims)
    out["PearsonR"] = pearson_r(pred, target, n_spatial_dims)
    return out
