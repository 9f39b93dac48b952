"""Tests of tokpre.models.flexconv: references, causality, shapes, padding, equivariance, 3D, logical axes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import flax.linen as nn
from jax import lax

from tokpre.models.flexconv import (FlexCausalConv, FlexCausalConvTranspose, _dimension_numbers,
                                    kernel_logical_axes)


def _rand(shape, seed=0):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


def _init_apply(module, x, strides, periodic, seed=0):
    v = nn.unbox(module.init(jax.random.key(seed), x, strides=strides, periodic=periodic))
    return v, module.apply(v, x, strides=strides, periodic=periodic)


def _reference_conv(x, w, strides, periodic):
    """Direct strided conv on an explicitly padded input: edge-left in time, wrap/edge split in space."""
    kt, st = w.shape[0], strides[0]
    x = jnp.pad(x, [(0, 0), (kt - st, 0)] + [(0, 0)] * (x.ndim - 2), mode="edge")
    for i, (k, s, per) in enumerate(zip(w.shape[1:-2], strides[1:], periodic)):
        pw = [(0, 0)] * x.ndim
        pw[2 + i] = ((k - s) // 2, k - s - (k - s) // 2)
        x = jnp.pad(x, pw, mode="wrap" if per else "edge")
    return lax.conv_general_dilated(x, w, strides, "VALID", dimension_numbers=_dimension_numbers(w.ndim - 2))


def _reference_transpose(x, w, strides, periodic):
    """Scatter-form transposed conv, 2D data, loops: y[o] = sum_j x[j] w[o + c - j s] with padded latents."""
    x, w = np.asarray(x, np.float64), np.asarray(w, np.float64)
    b, t, h, wd, _ = x.shape
    kt, kh, kw, _, co = w.shape
    st, sh, sw = strides
    ch, cw = (kh - sh) // 2, (kw - sw) // 2
    y = np.zeros((b, t * st, h * sh, wd * sw, co))

    def src(o, c, k_i, s, n, per, is_time):
        out = []
        for a in range(k_i):
            j = o + c - a
            if j % s:
                continue
            j //= s
            if j >= n and is_time:
                continue  # never reached for causal taps (a >= 0); kept for clarity
            j = j % n if per else min(max(j, 0), n - 1)
            out.append((a, j))
        return out

    for o in range(t * st):
        for p in range(h * sh):
            for q in range(wd * sw):
                acc = np.zeros((b, co))
                for a, jt in src(o, 0, kt, st, t, False, True):
                    for bb, jh in src(p, ch, kh, sh, h, periodic[0], False):
                        for cc, jw in src(q, cw, kw, sw, wd, periodic[1], False):
                            acc += x[:, jt, jh, jw, :] @ w[a, bb, cc]
                y[:, o, p, q] = acc
    return y


@pytest.mark.parametrize("ks,strides", [((3, 5, 3), (2, 2, 3)), ((2, 4, 4), (1, 4, 2)), ((2, 4, 4), (2, 2, 2)),
                                        ((3, 3, 3), (1, 1, 1))])
def test_conv_matches_reference(ks, strides):
    x = _rand((2, 6, 12, 6, 3))
    for periodic in [(True, False), (False, True)]:
        v, y = _init_apply(FlexCausalConv(4, ks, use_bias=False), x, strides, periodic)
        yr = _reference_conv(x, v["params"]["kernel"], strides, periodic)
        assert y.shape == (2, 6 // strides[0], 12 // strides[1], 6 // strides[2], 4)
        np.testing.assert_allclose(np.asarray(y), np.asarray(yr), atol=1e-5)


@pytest.mark.parametrize("ks,strides", [((2, 4, 4), (1, 2, 4)), ((2, 4, 3), (2, 4, 1)), ((3, 5, 4), (2, 2, 2))])
def test_transpose_matches_scatter_reference(ks, strides):
    x = _rand((1, 3, 3, 2, 2), seed=1)
    for periodic in [(True, False), (False, True)]:
        v, y = _init_apply(FlexCausalConvTranspose(3, ks, use_bias=False), x, strides, periodic)
        yr = _reference_transpose(x, v["params"]["kernel"], strides, periodic)
        assert y.shape == (1, 3 * strides[0], 3 * strides[1], 2 * strides[2], 3)
        np.testing.assert_allclose(np.asarray(y), yr, atol=1e-5)


@pytest.mark.parametrize("kt,st", [(2, 1), (2, 2), (3, 1), (3, 2), (4, 2), (3, 3)])
def test_conv_causality(kt, st):
    T = 4 * st
    x = _rand((2, T, 8, 8, 3))
    module = FlexCausalConv(5, (kt, 3, 3))
    v, y = _init_apply(module, x, (st, 2, 2), (True, False))
    for p in range(T):
        y2 = module.apply(v, x.at[:, p].add(1.0), strides=(st, 2, 2), periodic=(True, False))
        j0 = p // st  # output frame j reads input frames <= (j+1)*st - 1: unchanged for j < p // st
        np.testing.assert_array_equal(np.asarray(y2[:, :j0]), np.asarray(y[:, :j0]))
        assert not np.allclose(np.asarray(y2[:, j0]), np.asarray(y[:, j0])), (p, j0)


@pytest.mark.parametrize("kt,st", [(2, 1), (2, 2), (3, 2), (4, 2)])
def test_transpose_causality(kt, st):
    Tl = 4
    z = _rand((2, Tl, 4, 4, 3))
    module = FlexCausalConvTranspose(5, (kt, 4, 4))
    v, y = _init_apply(module, z, (st, 2, 2), (False, True))
    assert y.shape == (2, Tl * st, 8, 8, 5)
    for j in range(Tl):
        y2 = module.apply(v, z.at[:, j].add(1.0), strides=(st, 2, 2), periodic=(False, True))
        # output block i (frames i*st .. i*st+st-1) depends only on latents <= i
        np.testing.assert_array_equal(np.asarray(y2[:, :j * st]), np.asarray(y[:, :j * st]))
        assert not np.allclose(np.asarray(y2[:, j * st:(j + 1) * st]), np.asarray(y[:, j * st:(j + 1) * st]))


def test_same_kernel_serves_every_stride_and_shapes():
    x = _rand((1, 4, 16, 16, 2))
    conv, tconv = FlexCausalConv(3, (2, 4, 4)), FlexCausalConvTranspose(2, (2, 4, 4))
    v = nn.unbox(conv.init(jax.random.key(0), x, strides=(1, 4, 4), periodic=(True, True)))
    vt = None
    for strides in [(1, 1, 1), (1, 2, 2), (2, 4, 4), (2, 2, 4), (1, 4, 1)]:
        y = conv.apply(v, x, strides=strides, periodic=(True, False))
        assert y.shape == (1, 4 // strides[0], 16 // strides[1], 16 // strides[2], 3)
        if vt is None:
            vt = nn.unbox(tconv.init(jax.random.key(1), y, strides=strides, periodic=(True, False)))
        up = tconv.apply(vt, y, strides=strides, periodic=(True, False))
        assert up.shape == x.shape


def test_errors():
    x = _rand((1, 4, 8, 8, 2))
    with pytest.raises(ValueError, match="kernel size must be >= stride"):
        FlexCausalConv(3, (2, 2, 2)).init(jax.random.key(0), x, strides=(1, 4, 2), periodic=(True, True))
    with pytest.raises(ValueError, match="kernel size must be >= stride"):
        FlexCausalConv(3, (1, 4, 4)).init(jax.random.key(0), x, strides=(2, 2, 2), periodic=(True, True))
    with pytest.raises(ValueError, match="kernel size must be >= stride"):
        FlexCausalConvTranspose(3, (2, 2, 2)).init(jax.random.key(0), x, strides=(1, 4, 2), periodic=(True, True))
    with pytest.raises(ValueError, match="not a multiple of stride"):
        FlexCausalConv(3, (2, 4, 4)).init(jax.random.key(0), x[:, :3], strides=(2, 2, 2), periodic=(True, True))
    with pytest.raises(ValueError, match="periodic must have 2 entries"):
        FlexCausalConv(3, (2, 4, 4)).init(jax.random.key(0), x, strides=(1, 2, 2), periodic=(True,))


def test_circular_padding_equivariance():
    x = _rand((1, 2, 16, 12, 3))
    conv, tconv = FlexCausalConv(4, (2, 5, 4)), FlexCausalConvTranspose(3, (2, 5, 4))
    per = (True, False)
    v, y = _init_apply(conv, x, (1, 4, 2), per)
    vt, up = _init_apply(tconv, y, (1, 4, 2), per)
    for shift in (4, 8, 12):
        y_r = conv.apply(v, jnp.roll(x, shift, axis=2), strides=(1, 4, 2), periodic=per)
        np.testing.assert_allclose(np.asarray(y_r), np.asarray(jnp.roll(y, shift // 4, axis=2)), atol=1e-5)
        up_r = tconv.apply(vt, jnp.roll(y, shift // 4, axis=2), strides=(1, 4, 2), periodic=per)
        np.testing.assert_allclose(np.asarray(up_r), np.asarray(jnp.roll(up, shift, axis=2)), atol=1e-5)


def test_replicate_padding_keeps_constant_fields_constant():
    """Edge (not zero) padding: a field constant in space and time gives a constant output, on every axis."""
    x = jnp.broadcast_to(jnp.asarray([0.7, -1.3], jnp.float32), (1, 4, 8, 8, 2))
    for per in [(False, False), (True, False)]:
        _, y = _init_apply(FlexCausalConv(3, (2, 4, 4)), x, (2, 2, 2), per)
        np.testing.assert_allclose(np.asarray(y), np.broadcast_to(np.asarray(y[0, 0, 0, 0]), y.shape), atol=1e-5)
    # transposed: constant latent -> constant within each sub-pixel phase, and no boundary artefact
    z = jnp.broadcast_to(jnp.asarray([0.5, 2.0], jnp.float32), (1, 3, 4, 4, 2))
    _, up = _init_apply(FlexCausalConvTranspose(3, (2, 4, 4)), z, (1, 2, 2), (False, False))
    up = np.asarray(up)
    for r in range(2):
        for q in range(2):
            phase = up[:, :, r::2, q::2]
            np.testing.assert_allclose(phase, np.broadcast_to(phase[0, 0, 0, 0], phase.shape), atol=1e-5)


def test_3d_data_and_logical_axes():
    x = _rand((1, 2, 4, 4, 4, 2))
    conv = FlexCausalConv(3, (2, 2, 2, 2))
    boxed = conv.init(jax.random.key(0), x, strides=(2, 2, 2, 2), periodic=(True, False, True))
    assert boxed["params"]["kernel"].names == ("conv_t", "conv_h", "conv_w", "conv_d", "conv_in", "conv_out")
    assert boxed["params"]["bias"].names == ("conv_out",)
    v = nn.unbox(boxed)
    y = conv.apply(v, x, strides=(2, 2, 2, 2), periodic=(True, False, True))
    assert y.shape == (1, 1, 2, 2, 2, 3)
    yr = _reference_conv(x, v["params"]["kernel"], (2, 2, 2, 2), (True, False, True)) + v["params"]["bias"]
    np.testing.assert_allclose(np.asarray(y), np.asarray(yr), atol=1e-5)
    tconv = FlexCausalConvTranspose(2, (2, 2, 2, 2))
    vt, up = _init_apply(tconv, y, (2, 2, 2, 2), (True, False, True))
    assert up.shape == x.shape
    assert kernel_logical_axes(2) == ("conv_t", "conv_h", "conv_w", "conv_in", "conv_out")
