"""Tests of tokpre.models.tokeniser: shapes for every compression, causality, equivariance, field-indexed layers,
padding, 3D, validation, patch jittering."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import flax.linen as nn

from tokpre.models.tokeniser import (Tokeniser, compression_ratio, jitter_roll, split_spatial_factor, unroll)

PER = (True, False)
SMALL = dict(vocab_size=12, widths=(8, 8), latent_channels=4)


def _rand(shape, seed=0):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


@pytest.fixture(scope="module")
def setup():
    model = Tokeniser(**SMALL)
    x = _rand((1, 4, 16, 16, 3))
    ids = jnp.asarray([2, 5, 7], jnp.int32)
    boxed = model.init(jax.random.key(0), x, ids, periodic=PER, compression=(2, 16))
    return model, nn.unbox(boxed), boxed, x, ids


def _encode(model, v, x, ids, comp, periodic=PER):
    return model.apply(v, x, ids, periodic=periodic, compression=comp, method="encode")


def _decode(model, v, z, ids, comp, periodic=PER):
    return model.apply(v, z, ids, periodic=periodic, compression=comp, method="decode")


def test_param_tree_and_logical_axes(setup):
    model, v, boxed, x, ids = setup
    assert set(v["params"].keys()) == {"encoder", "decoder"}
    enc, dec = boxed["params"]["encoder"], boxed["params"]["decoder"]
    assert enc["lift_table"].names == ("vocab", "embed") and enc["lift_table"].value.shape == (12, 8)
    assert dec["head_table"].names == ("vocab", "embed") and dec["head_table"].value.shape == (12, 8)
    assert dec["head_bias"].names == ("vocab",)
    assert enc["down0"]["kernel"].names == ("conv_t", "conv_h", "conv_w", "conv_in", "conv_out")
    assert enc["norm0"]["scale"].names == ("norm",)
    # every leaf is boxed with names
    leaves = jax.tree.leaves(boxed, is_leaf=lambda l: isinstance(l, nn.LogicallyPartitioned))
    assert all(isinstance(l, nn.LogicallyPartitioned) for l in leaves)


def test_shapes_every_compression_one_param_set(setup):
    model, v, _, x, ids = setup
    shapes = jax.tree.map(jnp.shape, v)
    for t in model.temporal_factors:
        for s in model.spatial_factors:
            # initialising at another compression gives the identical tree: weights don't depend on (t, s)
            assert jax.tree.map(jnp.shape, nn.unbox(model.init(jax.random.key(1), x, ids, periodic=PER,
                                                               compression=(t, s)))) == shapes
            z = _encode(model, v, x, ids, (t, s))
            assert z.shape == (1, 4 // t, 16 // s, 16 // s, 4)
            y = _decode(model, v, z, ids, (t, s))
            assert y.shape == x.shape
            assert bool(jnp.all(jnp.isfinite(y)))
            r = model.apply(v, x, ids, periodic=PER, compression=(t, s))
            np.testing.assert_allclose(np.asarray(r), np.asarray(y), atol=1e-6)


@pytest.mark.parametrize("t", [1, 2])
def test_causality_encode_and_round_trip(setup, t):
    model, v, _, x, ids = setup
    s = 4
    enc = jax.jit(functools.partial(_encode, model, comp=(t, s)))
    full = jax.jit(lambda v, x: model.apply(v, x, ids, periodic=PER, compression=(t, s)))
    z, y = enc(v, x, ids), full(v, x)
    T = x.shape[1]
    for p in range(T):
        xp = x.at[:, p].add(1.0)
        z2, y2 = enc(v, xp, ids), full(v, xp)
        j0 = p // t                      # first latent frame allowed to see frame p
        np.testing.assert_array_equal(np.asarray(z2[:, :j0]), np.asarray(z[:, :j0]))
        np.testing.assert_array_equal(np.asarray(y2[:, :j0 * t]), np.asarray(y[:, :j0 * t]))
        assert not np.allclose(np.asarray(z2[:, j0]), np.asarray(z[:, j0]))
        assert not np.allclose(np.asarray(y2[:, j0 * t:]), np.asarray(y[:, j0 * t:]))


def test_decode_causality(setup):
    model, v, _, x, ids = setup
    z = _encode(model, v, x, ids, (2, 8))
    y = _decode(model, v, z, ids, (2, 8))
    for j in range(z.shape[1]):
        y2 = _decode(model, v, z.at[:, j].add(1.0), ids, (2, 8))
        np.testing.assert_array_equal(np.asarray(y2[:, :2 * j]), np.asarray(y[:, :2 * j]))
        assert not np.allclose(np.asarray(y2[:, 2 * j:2 * j + 2]), np.asarray(y[:, 2 * j:2 * j + 2]))


@pytest.mark.parametrize("s", [4, 8])
def test_periodic_shift_equivariance(setup, s):
    model, v, _, x, ids = setup
    comp = (1, s)
    z, y = _encode(model, v, x, ids, comp), model.apply(v, x, ids, periodic=PER, compression=comp)
    for k in (1, 2):
        shift = k * s
        xr = jnp.roll(x, shift, axis=2)   # axis 2 = H, periodic
        zr = _encode(model, v, xr, ids, comp)
        yr = model.apply(v, xr, ids, periodic=PER, compression=comp)
        np.testing.assert_allclose(np.asarray(zr), np.asarray(jnp.roll(z, shift // s, axis=2)), atol=1e-5)
        np.testing.assert_allclose(np.asarray(yr), np.asarray(jnp.roll(y, shift, axis=2)), atol=1e-5)


def test_replicate_padding_non_periodic(setup):
    model, v, _, x, ids = setup
    # A field constant in space gives a latent constant in space with edge padding on every axis
    # (zero padding would make the boundary cells differ).
    xc = jnp.broadcast_to(jnp.asarray([0.3, -1.0, 2.0], jnp.float32), x.shape)
    for per in [(False, False), (True, False), (True, True)]:
        z = _encode(model, v, xc, ids, (1, 4), periodic=per)
        np.testing.assert_allclose(np.asarray(z), np.broadcast_to(np.asarray(z[:, :, :1, :1]), z.shape), atol=1e-5)
    # Non-periodic round trips and gradients are finite, and the boundary flag really changes the result.
    loss = lambda v, per: jnp.mean(jnp.square(model.apply(v, x, ids, periodic=per, compression=(2, 4)) - x))
    g = jax.grad(loss)(v, (False, False))
    assert all(bool(jnp.all(jnp.isfinite(a))) for a in jax.tree.leaves(g))
    assert float(jnp.abs(loss(v, (False, False)) - loss(v, (True, True)))) > 0


def test_field_indexed_layers(setup):
    model, v, _, x, ids = setup
    comp = (1, 4)
    z = _encode(model, v, x, ids, comp)
    # permuting channels together with their field ids leaves the latent unchanged and permutes the output
    perm = jnp.asarray([2, 0, 1])
    zp = _encode(model, v, x[..., perm], ids[perm], comp)
    np.testing.assert_allclose(np.asarray(zp), np.asarray(z), atol=1e-5)
    y = _decode(model, v, z, ids, comp)
    np.testing.assert_allclose(np.asarray(_decode(model, v, z, ids[perm], comp)), np.asarray(y[..., perm]), atol=1e-5)
    # different ids select different rows
    other = jnp.asarray([2, 5, 9], jnp.int32)
    assert not np.allclose(np.asarray(_encode(model, v, x, other, comp)), np.asarray(z))
    y_other = _decode(model, v, z, other, comp)
    np.testing.assert_allclose(np.asarray(y_other[..., :2]), np.asarray(y[..., :2]), atol=1e-6)
    assert not np.allclose(np.asarray(y_other[..., 2]), np.asarray(y[..., 2]))
    # a system with a different number of channels uses the same parameters
    y4 = model.apply(v, x[..., :2], ids[:2], periodic=PER, compression=comp)
    assert y4.shape == x[..., :2].shape


def test_unseen_field_rows_get_no_gradient(setup):
    model, v, _, x, ids = setup

    def loss(v):
        return jnp.mean(jnp.square(model.apply(v, x, ids, periodic=PER, compression=(2, 8)) - x))

    g = jax.grad(loss)(v)["params"]
    used = np.zeros(12, bool)
    used[np.asarray(ids)] = True
    for name, grad in [("lift_table", g["encoder"]["lift_table"]), ("head_table", g["decoder"]["head_table"]),
                       ("head_bias", g["decoder"]["head_bias"])]:
        grad = np.asarray(grad).reshape(12, -1)
        assert np.all(grad[~used] == 0.0), name
        assert np.all(np.abs(grad[used]).sum(axis=1) > 0), name


def test_3d_data():
    model = Tokeniser(vocab_size=8, widths=(4, 4), latent_channels=2, spatial_factors=(2, 4), n_spatial_dims=3)
    x = _rand((1, 2, 8, 8, 4, 2))
    ids = jnp.asarray([0, 3], jnp.int32)
    per = (True, False, True)
    v = nn.unbox(model.init(jax.random.key(0), x, ids, periodic=per, compression=(2, 4)))
    assert set(v["params"]) == {"encoder", "decoder"}
    z = _encode(model, v, x, ids, (2, 4), per)
    assert z.shape == (1, 1, 2, 2, 1, 2)
    assert model.apply(v, x, ids, periodic=per, compression=(1, 2)).shape == x.shape
    z2 = _encode(model, v, x.at[:, 1].add(1.0), ids, (1, 2), per)
    np.testing.assert_array_equal(np.asarray(z2[:, 0]), np.asarray(_encode(model, v, x, ids, (1, 2), per)[:, 0]))


def test_validation_errors(setup):
    model, v, _, x, ids = setup
    with pytest.raises(ValueError, match=r"model\.tokeniser\.spatial_factors"):
        model.apply(v, x, ids, periodic=PER, compression=(1, 2))
    with pytest.raises(ValueError, match=r"model\.tokeniser\.temporal_factors"):
        model.apply(v, x, ids, periodic=PER, compression=(4, 4))
    with pytest.raises(ValueError, match="multiple of t=2"):
        model.apply(v, x[:, :3], ids, periodic=PER, compression=(2, 4))
    with pytest.raises(ValueError, match="periodic"):
        model.apply(v, x, ids, periodic=(True,), compression=(1, 4))
    with pytest.raises(ValueError, match="field_ids"):
        model.apply(v, x, ids[:2], periodic=PER, compression=(1, 4))
    with pytest.raises(ValueError, match="vocab_size"):
        model.apply(v, x, jnp.asarray([0, 1, 12]), periodic=PER, compression=(1, 4))
    with pytest.raises(ValueError, match=r"model\.tokeniser\.kernel_t"):
        Tokeniser(**SMALL, kernel_t=1).init(jax.random.key(0), x, ids, periodic=PER, compression=(1, 4))
    with pytest.raises(ValueError, match=r"model\.tokeniser\.kernel_s"):
        Tokeniser(**SMALL, kernel_s=2).init(jax.random.key(0), x, ids, periodic=PER, compression=(1, 4))


def test_depth_and_jit(setup):
    _, _, _, x, ids = setup
    model = Tokeniser(**SMALL, depth=1, norm="layer", activation="gelu")
    v = nn.unbox(model.init(jax.random.key(0), x, ids, periodic=PER, compression=(1, 8)))
    assert "res0_0" in v["params"]["encoder"] and "res1_0" in v["params"]["decoder"]
    f = jax.jit(model.apply, static_argnames=("periodic", "compression"))
    y = f(v, x, ids, periodic=PER, compression=(2, 8))
    np.testing.assert_allclose(np.asarray(y), np.asarray(model.apply(v, x, ids, periodic=PER, compression=(2, 8))),
                               atol=1e-5)


def test_decoder_depth_is_separate(setup):
    _, _, _, x, ids = setup
    model = Tokeniser(**SMALL, depth=0, decoder_depth=2)
    p = nn.unbox(model.init(jax.random.key(0), x, ids, periodic=PER, compression=(1, 4)))["params"]
    assert not any(k.startswith("res") for k in p["encoder"])
    assert {k for k in p["decoder"] if k.startswith("res")} == {"res0_0", "res0_1", "res1_0", "res1_1"}
    assert model.apply({"params": p}, x, ids, periodic=PER, compression=(2, 8)).shape == x.shape
    with pytest.raises(ValueError, match=r"model\.tokeniser\.decoder_depth must be >= 0"):
        Tokeniser(**SMALL, decoder_depth=-1).init(jax.random.key(0), x, ids, periodic=PER, compression=(1, 4))


@pytest.mark.parametrize("arch", [dict(), dict(decoder_depth=1, res_kernel_t=1), dict(depth=1)])
def test_decoder_context_is_the_exact_time_receptive_field(arch):
    """The last decoded block depends on exactly the last ``decoder_context`` latents (stage 2 decodes only them)."""
    model = Tokeniser(**SMALL, **arch)
    z = _rand((1, 12, 4, 4, 4), seed=3)
    ids = jnp.asarray([2, 5], jnp.int32)
    v = nn.unbox(model.init(jax.random.key(1), z, ids, periodic=PER, compression=(1, 4), method="decode"))
    for t in (1, 2):
        k = model.decoder_context((t, 4))
        assert 1 <= k < z.shape[1]
        full = _decode(model, v, z, ids, (t, 4))[:, -t:]
        np.testing.assert_allclose(np.asarray(_decode(model, v, z[:, -k:], ids, (t, 4))[:, -t:]), np.asarray(full),
                                   atol=1e-5)
        if k > 1:   # one latent fewer changes the block: the context is not over-estimated
            short = _decode(model, v, z[:, -(k - 1):], ids, (t, 4))[:, -t:]
            assert float(jnp.max(jnp.abs(short - full))) > 1e-4
    assert Tokeniser(**SMALL).decoder_context((1, 4)) == 3                       # up1 + up0, time kernel 2
    assert Tokeniser(**SMALL, depth=1).decoder_context((1, 4)) == 7              # + 2 blocks x 2 convs
    assert Tokeniser(**SMALL, depth=1, res_kernel_t=1).decoder_context((2, 4)) == 2


def test_split_and_ratio():
    assert [split_spatial_factor(s, 2) for s in (1, 2, 4, 8, 16, 32)] == [(1, 1), (2, 1), (2, 2), (4, 2), (4, 4),
                                                                           (8, 4)]
    assert split_spatial_factor(16, 3) == (4, 2, 2)
    assert split_spatial_factor(6, 2) == (3, 2)
    assert compression_ratio((8, 4, 64, 64, 5), (2, 16), 16) == pytest.approx(4 * 64 * 64 * 5 / (2 * 4 * 4 * 16))
    assert compression_ratio((1, 1, 32, 32, 4), (1, 4), 4) == pytest.approx(16.0)


def test_jitter_and_unroll_are_inverse():
    x = _rand((6, 2, 16, 8, 3))
    per = (True, False)
    xr, shifts = jitter_roll(x, jax.random.key(3), per, 8)
    assert shifts.shape == (6, 2) and shifts.dtype == jnp.int32
    sh = np.asarray(shifts)
    assert np.all((sh[:, 0] >= 0) & (sh[:, 0] < 8)) and np.all(sh[:, 1] == 0)
    assert len(set(sh[:, 0].tolist())) > 1   # per-sample offsets
    for b in range(6):
        np.testing.assert_array_equal(np.asarray(xr[b]), np.asarray(jnp.roll(x[b], int(sh[b, 0]), axis=1)))
    np.testing.assert_array_equal(np.asarray(unroll(xr, shifts, per)), np.asarray(x))
    # jit-able and inverse under jit, per-axis strides
    f = jax.jit(lambda x, k: unroll(*jitter_roll(x, k, (True, True), (4, 2)), (True, True)))
    np.testing.assert_array_equal(np.asarray(f(x, jax.random.key(4))), np.asarray(x))
