"""Tests for tokpre/eval/metrics.py: values pinned against inline numpy references of The Well's definitions."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tokpre.eval import metrics as M


def _pair(shape, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.normal(size=shape).astype(np.float32) * 2.0 + 0.5
    x = y + rng.normal(size=shape).astype(np.float32) * 0.7
    return x, y


# ----------------------------------------------------------------------------------------------- numpy references


def _np_spatial(x, y, d):
    """Reference values of the spatial metrics, float64, (B, T, C)."""
    x = x.astype(np.float64)
    y = y.astype(np.float64)
    axes = tuple(range(-d - 1, -1))
    n = int(np.prod([x.shape[a] for a in axes]))
    err = x - y
    ref = {}
    ref["mse"] = (err ** 2).sum(axis=axes) / n
    ref["mae"] = np.abs(err).sum(axis=axes) / n
    ref["rmse"] = np.sqrt(ref["mse"])
    ref["nmse"] = ref["mse"] / ((y ** 2).sum(axis=axes) / n + 1e-7)
    ref["nrmse"] = np.sqrt(ref["nmse"])
    ybar = y.mean(axis=axes, keepdims=True)
    xbar = x.mean(axis=axes, keepdims=True)
    var_y = ((y - ybar) ** 2).sum(axis=axes) / (n - 1)  # unbiased
    var_x = ((x - xbar) ** 2).sum(axis=axes) / (n - 1)
    ref["vmse"] = ref["mse"] / (var_y + 1e-7)
    ref["vrmse"] = np.sqrt(ref["vmse"])
    ref["nmae"] = ref["mae"] / (np.abs(y).sum(axis=axes) / n + 1e-7)
    ref["linf"] = np.abs(err).max(axis=axes)
    cov = ((x - xbar) * (y - ybar)).sum(axis=axes) / n  # biased
    ref["pearson_r"] = cov / (np.sqrt(var_x) * np.sqrt(var_y) + 1e-7)
    return ref


def _np_binned(x, y, d):
    """Reference of The Well's binned_spectral_mse by explicit loops over modes, float64."""
    x = x.astype(np.float64)
    y = y.astype(np.float64)
    axes = tuple(range(-d - 1, -1))
    shape = tuple(x.shape[a] for a in axes)
    n = int(np.prod(shape))
    edges = np.logspace(np.log10(2 * np.pi / max(shape)), np.log10(np.pi * np.sqrt(d) + 1e-6), 4)
    edges[0] = 0.0
    fe = np.fft.fftn(x - y, axes=axes)
    fy = np.fft.fftn(y, axes=axes)
    lead = x.shape[: axes[0] + x.ndim]
    sums_e = np.zeros(lead + (3, x.shape[-1]))
    sums_y = np.zeros_like(sums_e)
    counts = np.zeros(3)
    for idx in itertools.product(*[range(s) for s in shape]):
        k = np.sqrt(sum((2 * np.pi * (i if i < s - s // 2 else i - s) / s) ** 2 for i, s in zip(idx, shape)))
        b = [j for j in range(3) if edges[j] <= k < edges[j + 1]]
        if not b:
            continue
        sl = (Ellipsis,) + idx + (slice(None),)
        sums_e[..., b[0], :] += np.abs(fe[sl]) ** 2
        sums_y[..., b[0], :] += np.abs(fy[sl]) ** 2
        counts[b[0]] += 1
    c = counts[:, None]
    mse_b = sums_e / (c + 1e-7) * c / n ** 2
    en_b = sums_y / (c + 1e-7) * c / n ** 2
    return mse_b, mse_b / (en_b + 1e-7), edges


SPATIAL = ["mse", "mae", "rmse", "nmse", "nrmse", "vmse", "vrmse", "nmae", "linf", "pearson_r"]


# ----------------------------------------------------------------------------------------------------- spatial


@pytest.mark.parametrize("shape,d", [((2, 3, 6, 5, 2), 2), ((1, 2, 4, 3, 5, 3), 3), ((2, 2, 7, 1), 1)])
def test_spatial_metrics_match_numpy_reference(shape, d):
    x, y = _pair(shape)
    ref = _np_spatial(x, y, d)
    for name in SPATIAL:
        got = np.asarray(getattr(M, name)(jnp.asarray(x), jnp.asarray(y)))
        assert got.shape == shape[:2] + shape[-1:], name
        np.testing.assert_allclose(got, ref[name], rtol=2e-5, atol=1e-6, err_msg=name)


def test_hand_computed_values_tiny_grid():
    # One (B, T, C) slot on a 2x2 grid: y = [[1, 2], [3, 4]], x = y + [[1, 0], [0, -1]] (error e).
    y = np.array([[1.0, 2.0], [3.0, 4.0]], np.float32).reshape(1, 1, 2, 2, 1)
    e = np.array([[1.0, 0.0], [0.0, -1.0]], np.float32).reshape(1, 1, 2, 2, 1)
    x = y + e
    xj, yj = jnp.asarray(x), jnp.asarray(y)
    # MSE = (1 + 0 + 0 + 1) / 4 = 0.5; MAE = 0.5; Linf = 1
    assert float(M.mse(xj, yj)[0, 0, 0]) == pytest.approx(0.5)
    assert float(M.mae(xj, yj)[0, 0, 0]) == pytest.approx(0.5)
    assert float(M.linf(xj, yj)[0, 0, 0]) == pytest.approx(1.0)
    # mean y^2 = 30/4 = 7.5 -> NMSE = 0.5 / 7.5
    assert float(M.nmse(xj, yj)[0, 0, 0]) == pytest.approx(0.5 / (7.5 + 1e-7), rel=1e-6)
    # unbiased var y = ((1.5^2 + 0.5^2) * 2) / 3 = 5/3 -> VRMSE = sqrt(0.5 / (5/3)) = sqrt(0.3)
    assert float(M.vrmse(xj, yj)[0, 0, 0]) == pytest.approx(np.sqrt(0.5 / (5 / 3 + 1e-7)), rel=1e-6)
    # x = [[2, 2], [3, 3]]: cov(biased) = mean((x-2.5)(y-2.5)) = (0.75+0.25+0.25+0.75)/4 = 0.5;
    # var_x unbiased = 4 * 0.25 / 3 = 1/3 -> r = 0.5 / (sqrt(1/3) sqrt(5/3))
    assert float(M.pearson_r(xj, yj)[0, 0, 0]) == pytest.approx(0.5 / (np.sqrt(1 / 3) * np.sqrt(5 / 3)), rel=1e-6)


def test_vrmse_of_spatial_mean_prediction_is_sqrt_n_minus_1_over_n():
    rng = np.random.default_rng(1)
    y = rng.normal(size=(2, 2, 32, 32, 2)).astype(np.float32) * 3.0 + 1.0
    x = np.broadcast_to(y.mean(axis=(2, 3), keepdims=True), y.shape)
    got = np.asarray(M.vrmse(jnp.asarray(x), jnp.asarray(y)))
    n = 32 * 32
    np.testing.assert_allclose(got, np.sqrt((n - 1) / n), rtol=1e-5)
    assert np.all(got < 1.0)


def test_vrmse_scale_and_shift_invariance():
    x, y = _pair((2, 3, 8, 8, 2), seed=3)
    base = np.asarray(M.vrmse(jnp.asarray(x), jnp.asarray(y)))
    a, b = 7.3, -2.0
    scaled = np.asarray(M.vrmse(jnp.asarray(a * x + b), jnp.asarray(a * y + b)))
    np.testing.assert_allclose(scaled, base, rtol=1e-4)
    # and RMSE is not scale invariant (guards against a degenerate implementation)
    assert not np.allclose(M.rmse(jnp.asarray(a * x), jnp.asarray(a * y)), M.rmse(jnp.asarray(x), jnp.asarray(y)))


def test_perfect_prediction():
    _, y = _pair((1, 2, 8, 8, 3))
    yj = jnp.asarray(y)
    assert float(jnp.max(M.vrmse(yj, yj))) == 0.0
    n = 64
    np.testing.assert_allclose(M.pearson_r(yj, yj), (n - 1) / n, rtol=1e-5)  # biased cov / unbiased stds


def test_shape_mismatch_and_bad_dims_raise():
    with pytest.raises(ValueError, match="shapes differ"):
        M.mse(jnp.zeros((1, 1, 4, 4, 2)), jnp.zeros((1, 1, 4, 4, 3)))
    with pytest.raises(ValueError, match="n_spatial_dims"):
        M.mse(jnp.zeros((1, 1, 4, 4, 2)), jnp.zeros((1, 1, 4, 4, 2)), n_spatial_dims=5)


def test_explicit_n_spatial_dims():
    # (B, T, extra, H, W, C) treated as 2D with an extra leading axis
    x, y = _pair((2, 2, 3, 5, 6, 2), seed=5)
    got = np.asarray(M.vrmse(jnp.asarray(x), jnp.asarray(y), n_spatial_dims=2))
    assert got.shape == (2, 2, 3, 2)
    ref = np.stack([_np_spatial(x[:, :, i], y[:, :, i], 2)["vrmse"] for i in range(3)], axis=2)
    np.testing.assert_allclose(got, ref, rtol=2e-5)


def test_metrics_are_jittable():
    x, y = _pair((1, 2, 8, 8, 2))
    xj, yj = jnp.asarray(x), jnp.asarray(y)
    for name in SPATIAL:
        f = getattr(M, name)
        np.testing.assert_allclose(jax.jit(f)(xj, yj), f(xj, yj), rtol=1e-6, err_msg=name)
    jb = jax.jit(M.binned_spectral_mse)(xj, yj)
    for k, v in M.binned_spectral_mse(xj, yj).items():
        np.testing.assert_allclose(jb[k], v, rtol=1e-6, err_msg=k)
    jn = jax.jit(lambda a, b: M.neps(a, b)[0])(xj, yj)
    np.testing.assert_allclose(jn, M.neps(xj, yj)[0], rtol=1e-6)


# ----------------------------------------------------------------------------------------------------- spectral


def test_well_band_edges_match_reference_example():
    # the_well.md quotes ~[0, 0.106, 0.684, 4.443] at 128x384 in 2D; the geometric sequence from 2 pi / 384 to
    # pi sqrt(2) + 1e-6 gives e2 = 0.6861 exactly (the doc's 0.684 is a rounding slip), so pin the exact values.
    lo, hi = 2 * np.pi / 384, np.pi * np.sqrt(2) + 1e-6
    r = (hi / lo) ** (1 / 3)
    edges = M.well_spectral_band_edges((128, 384))
    assert edges.dtype == np.float32
    np.testing.assert_allclose(edges, [0.0, lo * r, lo * r * r, hi], rtol=1e-6)
    np.testing.assert_allclose(edges, [0, 0.106, 0.686, 4.443], atol=1e-3)


@pytest.mark.parametrize("shape,d", [((2, 2, 8, 6, 2), 2), ((1, 1, 4, 6, 4, 2), 3), ((2, 1, 12, 1), 1)])
def test_binned_spectral_mse_matches_reference_and_parseval(shape, d):
    x, y = _pair(shape, seed=7)
    mse_ref, nmse_ref, _ = _np_binned(x, y, d)
    out = M.binned_spectral_mse(jnp.asarray(x), jnp.asarray(y))
    assert sorted(out) == sorted([f"spectral_error_mse_per_bin_{i}" for i in range(3)]
                                 + [f"spectral_error_nmse_per_bin_{i}" for i in range(3)])
    for i in range(3):
        np.testing.assert_allclose(out[f"spectral_error_mse_per_bin_{i}"], mse_ref[..., i, :], rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(out[f"spectral_error_nmse_per_bin_{i}"], nmse_ref[..., i, :], rtol=1e-4,
                                   atol=1e-6)
    # Parseval: the bands sum to the spatial MSE
    total = sum(out[f"spectral_error_mse_per_bin_{i}"] for i in range(3))
    np.testing.assert_allclose(total, M.mse(jnp.asarray(x), jnp.asarray(y)), rtol=1e-5)


def test_binned_spectral_mse_single_cosine_lands_in_one_band():
    # 1D N=32: edges [0, 0.495, 1.247, pi+1e-6]; cos at index k=4 -> 2 pi 4/32 = 0.785 rad/px -> band 1.
    n = 32
    xs = np.arange(n)
    amp = 1.5
    err = amp * np.cos(2 * np.pi * 4 * xs / n)
    rng = np.random.default_rng(0)
    y = rng.normal(size=(1, 1, n, 1)).astype(np.float32)
    x = y + err.reshape(1, 1, n, 1).astype(np.float32)
    out = M.binned_spectral_mse(jnp.asarray(x), jnp.asarray(y))
    assert float(out["spectral_error_mse_per_bin_1"][0, 0, 0]) == pytest.approx(amp ** 2 / 2, rel=1e-5)
    assert abs(float(out["spectral_error_mse_per_bin_0"][0, 0, 0])) < 1e-9
    assert abs(float(out["spectral_error_mse_per_bin_2"][0, 0, 0])) < 1e-9


def test_neps_single_wavenumber_error_lands_in_its_shell_only():
    n = 16
    ii, jj = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    rng = np.random.default_rng(2)
    y = rng.normal(size=(1, 2, n, n, 2)).astype(np.float32)
    err = np.zeros_like(y)
    err[..., 0] = 0.8 * np.cos(2 * np.pi * 3 * ii / n)  # |k| = 3 (index units)
    err[..., 1] = 0.5 * np.sin(2 * np.pi * (3 * ii + 4 * jj) / n)  # |k| = 5
    vals, centres = M.neps(jnp.asarray(y + err), jnp.asarray(y))
    vals = np.asarray(vals)
    assert vals.shape == (1, 2, n // 2 + 1, 2)
    np.testing.assert_array_equal(centres, np.arange(n // 2 + 1))
    for c, k0, amp in [(0, 3, 0.8), (1, 5, 0.5)]:
        others = np.delete(vals[..., c], k0, axis=-1)
        assert np.all(np.abs(others) < 1e-6), (c, others)
        # error energy amp^2/2 over the target's energy in that shell
        p_y, _ = M.shell_power(jnp.asarray(y))
        expect = (amp ** 2 / 2) / (np.asarray(p_y)[..., k0, c] + 1e-7)
        np.testing.assert_allclose(vals[..., k0, c], expect, rtol=1e-4)


def test_neps_zero_prediction_is_one_and_perfect_is_zero():
    _, y = _pair((1, 1, 8, 8, 1), seed=4)
    yj = jnp.asarray(y)
    np.testing.assert_allclose(M.neps(jnp.zeros_like(yj), yj)[0], 1.0, rtol=1e-5)
    assert float(jnp.max(jnp.abs(M.neps(yj, yj)[0]))) == 0.0


def test_shell_power_custom_edges_and_1d_sums_to_mean_square():
    _, y = _pair((2, 1, 10, 3), seed=8)
    p, centres = M.shell_power(jnp.asarray(y))  # 1D: integer shells cover every mode
    np.testing.assert_allclose(np.asarray(p).sum(axis=-2), (y.astype(np.float64) ** 2).mean(axis=2), rtol=1e-5)
    p2, c2 = M.shell_power(jnp.asarray(y), shell_edges=np.array([0.0, 2.0, 6.0]))
    np.testing.assert_allclose(c2, [1.0, 4.0])
    pn = np.asarray(p)
    np.testing.assert_allclose(np.asarray(p2)[..., 0, :], pn[..., 0:2, :].sum(-2), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(p2)[..., 1, :], pn[..., 2:6, :].sum(-2), rtol=1e-5)
    with pytest.raises(ValueError, match="strictly increasing"):
        M.shell_power(jnp.asarray(y), shell_edges=np.array([2.0, 1.0]))


def test_neps_average_and_well_band_reduction():
    x, y = _pair((2, 3, 32, 2), seed=9)  # 1D: integer shells nest in the Well bands
    xj, yj = jnp.asarray(x), jnp.asarray(y)
    vals, centres = M.neps(xj, yj)
    avg = M.neps_average(vals)
    assert avg.shape == (17,)
    np.testing.assert_allclose(avg, np.asarray(vals).mean(axis=(0, 1, 3)), rtol=1e-6)
    assert M.neps_average(vals, keep_channels=True).shape == (17, 2)
    p_y, _ = M.shell_power(yj)
    bands = M.neps_to_well_bands(vals, centres, (32,), target_power=p_y)
    assert bands.shape == (2, 3, 3, 2)
    well = M.binned_spectral_mse(xj, yj)
    for i in range(3):
        np.testing.assert_allclose(bands[..., i, :], well[f"spectral_error_nmse_per_bin_{i}"], rtol=1e-4)
    # unweighted: plain mean of the shells in each band (1D N=32 edges -> shells 0-2, 3-6, 7-16)
    plain = np.asarray(M.neps_to_well_bands(vals, centres, (32,)))
    v = np.asarray(vals)
    for i, (a, b) in enumerate([(0, 3), (3, 7), (7, 17)]):
        np.testing.assert_allclose(plain[..., i, :], v[..., a:b, :].mean(-2), rtol=1e-6)


# ----------------------------------------------------------------------------------------------------- reductions


def test_well_time_windows():
    assert M.well_time_windows(100) == [(0, 1), (1, 3), (3, 10), (10, 31), (31, 100)]
    assert M.well_time_windows(97) == [(0, 1), (1, 3), (3, 9), (9, 30), (30, 97)]
    assert M.well_time_windows(50) == [(0, 1), (1, 2), (2, 7), (7, 18), (18, 49)]
    assert M.well_time_windows(1) == [(0, 1)]
    assert M.well_time_windows(3) == [(0, 1), (1, 1), (1, 3)]
    assert M.parse_window("6:12") == (6, 12)


def test_summarise_keys_and_values():
    rng = np.random.default_rng(0)
    m = rng.uniform(size=(3, 10, 2))  # (B, T, C)
    tc = m.mean(axis=0)
    out = M.summarise(m, ["rho", "u"], windows=["0:1", (3, 10)])
    assert out["rho_VRMSE_T=all"] == pytest.approx(tc[:, 0].mean())
    assert out["u_VRMSE_T=all"] == pytest.approx(tc[:, 1].mean())
    assert out["full_VRMSE_T=all"] == pytest.approx(tc.mean())
    assert out["full_VRMSE_T=3:10"] == pytest.approx(tc[3:10].mean())
    assert out["u_VRMSE_T=0:1"] == pytest.approx(tc[0, 1])
    assert len(out) == 9
    well = M.summarise(m, ["rho", "u"], windows="well", metric_name="RMSE")
    # T=10 windows: 0:1, 1:1 (empty, skipped), 1:3, 3:5, 5:10
    assert {k for k in well if k.startswith("full_")} == {
        "full_RMSE_T=all", "full_RMSE_T=0:1", "full_RMSE_T=1:3", "full_RMSE_T=3:5", "full_RMSE_T=5:10"}
    with pytest.raises(ValueError, match="field_names"):
        M.summarise(m, ["rho"])
    with pytest.raises(ValueError, match="outside"):
        M.summarise(m, ["rho", "u"], windows=["5:20"])


def test_evaluate_all_suite():
    x, y = _pair((2, 3, 8, 8, 2), seed=11)
    xj, yj = jnp.asarray(x), jnp.asarray(y)
    out = M.evaluate_all(xj, yj, ["a", "b"])
    assert set(out) == {"RMSE", "NRMSE", "LInfinity", "VRMSE", "PearsonR"} | {
        f"spectral_error_{k}_per_bin_{i}" for k in ("mse", "nmse") for i in range(3)}
    ref = _np_spatial(x, y, 2)
    for key, name in [("RMSE", "rmse"), ("NRMSE", "nrmse"), ("LInfinity", "linf"), ("VRMSE", "vrmse"),
                      ("PearsonR", "pearson_r")]:
        assert out[key].shape == (2, 3, 2)
        np.testing.assert_allclose(out[key], ref[name], rtol=2e-5, atol=1e-6, err_msg=key)
    summary = M.summarise(out, ["a", "b"])
    assert summary["full_VRMSE_T=all"] == pytest.approx(ref["vrmse"].mean(), rel=1e-5)
    assert "b_spectral_error_nmse_per_bin_2_T=all" in summary
    with pytest.raises(ValueError, match="field_names"):
        M.evaluate_all(xj, yj, ["a"])
