"""Tests for tokpre/models/emulator.py (tiny shapes, CPU)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tokpre.models.emulator import Emulator
from tokpre.models.processor import Processor
from tokpre.models.tokeniser import Tokeniser

TOK = dict(vocab_size=8, widths=(8, 8), latent_channels=4, spatial_factors=(4, 8), temporal_factors=(1, 2))
PROC = dict(d_model=16, num_layers=1, num_heads=2, mlp_ratio=2)
FIELD_IDS = jnp.array([0, 5], jnp.int32)
PERIODIC = (True, False)


def _emulator(n_spatial_dims=2, **proc_kw):
    return Emulator.from_configs(dict(TOK, n_spatial_dims=n_spatial_dims), dict(PROC, **proc_kw))


def _x(shape, seed=0):
    return jax.random.normal(jax.random.key(seed), shape, jnp.float32)


def _init(model, x, compression, periodic=PERIODIC):
    return jax.jit(lambda k, x: model.init(k, x, FIELD_IDS, periodic=periodic, compression=compression))(
        jax.random.key(1), x)


def _shapes(tree):
    return jax.tree.map(lambda a: a.shape, nn.unbox(tree))


@pytest.fixture(scope="module")
def em2d():
    """A 2-D emulator with a random processor out-projection, initialised at compression (2, 4)."""
    em = _emulator(zero_init_out=False)
    x = _x((1, 4, 16, 16, 2))
    return em, _init(em, x, (2, 4)), x


def test_param_tree_and_tokeniser_warm_start(em2d):
    em, v, x = em2d
    params = v["params"]
    assert set(params) == {"tokeniser", "processor"}
    assert set(params["tokeniser"]) == {"encoder", "decoder"}
    # A stand-alone tokeniser's params have exactly the emulator's tokeniser structure and shapes ...
    tok = Tokeniser(**TOK)
    vt = _init(tok, x, (1, 8))  # another compression: the parameter set must not depend on it
    assert jax.tree.structure(_shapes(vt["params"])) == jax.tree.structure(_shapes(params["tokeniser"]))
    assert _shapes(vt["params"]) == _shapes(params["tokeniser"])
    # ... and the same logical axis names, so the sharding rules apply unchanged after the swap.
    assert nn.get_partition_spec(vt["params"]) == nn.get_partition_spec(params["tokeniser"])
    # After the swap the emulator encodes exactly as the tokeniser does.
    warm = {"params": dict(params, tokeniser=vt["params"])}
    kw = dict(periodic=PERIODIC, compression=(2, 4))
    z_em = jax.jit(lambda v, x: em.apply(v, x, FIELD_IDS, method="encode", **kw))(warm, x)
    z_tok = jax.jit(lambda v, x: tok.apply(v, x, FIELD_IDS, method="encode", **kw))(vt, x)
    np.testing.assert_array_equal(z_em, z_tok)


@pytest.mark.parametrize("n_spatial_dims", [2, 3])
def test_shapes_every_compression(n_spatial_dims):
    """Shapes for every allowed (t, s), by abstract evaluation (no compile): one parameter set serves all."""
    em = _emulator(n_spatial_dims)
    grid = (16,) * n_spatial_dims if n_spatial_dims == 2 else (8, 8, 16)
    x = jax.ShapeDtypeStruct((2, 4, *grid, 2), jnp.float32)
    ref = None
    for t in TOK["temporal_factors"]:
        for s in TOK["spatial_factors"]:
            kw = dict(periodic=(False,) * n_spatial_dims, compression=(t, s))
            v = jax.eval_shape(lambda k, x: em.init(k, x, FIELD_IDS, **kw), jax.random.key(0), x)
            ref = ref or _shapes(v)
            assert _shapes(v) == ref, f"parameter shapes depend on compression {(t, s)}"
            out = jax.eval_shape(lambda v, x: em.apply(v, x, FIELD_IDS, **kw), v, x)
            assert out.shape == (2, t, *grid, 2), (t, s, out.shape)
            z = jax.eval_shape(lambda v, x: em.apply(v, x, FIELD_IDS, method="encode", **kw), v, x)
            assert z.shape == (2, 4 // t, *(n // s for n in grid), TOK["latent_channels"])
            z_next = jax.eval_shape(lambda v, z: em.apply(v, z, method="process"), v, z)
            assert z_next.shape == (2, 1, *z.shape[2:])


def seq_len(x, t=2):
    return x.shape[1] // t + 1


def test_call_equals_frozen_pipeline(em2d):
    """__call__ == encode -> process -> append -> decode_last (the path stage 2's frozen mode uses)."""
    em, v, x = em2d
    kw = dict(periodic=PERIODIC, compression=(2, 4))

    @jax.jit
    def both(v, x):
        out = em.apply(v, x, FIELD_IDS, **kw)
        z = em.apply(v, x, FIELD_IDS, method="encode", **kw)
        z_next = em.apply(v, z, method="process")
        seq = jnp.concatenate([z, z_next], axis=1)
        last = em.apply(v, seq, FIELD_IDS, method="decode_last", **kw)
        full = em.apply(v, seq, FIELD_IDS, method="decode", **kw)
        alone = em.apply(v, z_next, FIELD_IDS, method="decode", **kw)
        return out, last, full, alone

    out, last, full, alone = both(v, x)
    assert out.shape == (1, 2, 16, 16, 2)
    np.testing.assert_allclose(out, last, rtol=1e-5, atol=1e-5)
    # decode_last decodes only the last decoder_context latents (2 of the 3 here) and equals the full decode.
    assert em.tokeniser.decoder_context((2, 4)) == 2 < seq_len(x)
    np.testing.assert_allclose(last, full[:, -2:], rtol=1e-5, atol=1e-5)
    # The causal decoder uses past latents: decoding the prediction alone would give other frames. This is why
    # the emulator decodes its latent context.
    assert float(jnp.abs(alone - last).max()) > 1e-4


def test_zero_init_processor_is_persistence(em2d):
    """Zero out-projection (the default init, tested in processor_test.py): the predicted latent is the last latent and the output decodes it."""
    em, v_rand, x = em2d
    v = jax.tree.map(lambda a: a, v_rand)
    k = v["params"]["processor"]["out_proj"]["kernel"]
    v["params"]["processor"]["out_proj"]["kernel"] = k.replace_boxed(jnp.zeros_like(k.unbox()))
    kw = dict(periodic=PERIODIC, compression=(1, 8))

    @jax.jit
    def f(v, x):
        z = em.apply(v, x, FIELD_IDS, method="encode", **kw)
        return z, em.apply(v, z, method="process"), em.apply(v, x, FIELD_IDS, **kw), em.apply(
            v, jnp.concatenate([z, z[:, -1:]], axis=1), FIELD_IDS, method="decode_last", **kw)

    z, z_next, out, expect = f(v, x)
    np.testing.assert_array_equal(z_next, z[:, -1:])
    np.testing.assert_allclose(out, expect, rtol=1e-6, atol=1e-6)


def test_predict_all_causal(em2d):
    em, v, _ = em2d
    z = _x((1, 3, 4, 4, 4), seed=3)
    f = jax.jit(lambda v, z: em.apply(v, z, method="predict_all"))
    base, pert = f(v, z), f(v, z.at[:, 1].add(1.0))
    np.testing.assert_allclose(pert[:, :1], base[:, :1], rtol=1e-5, atol=1e-5)
    assert float(jnp.abs(pert[:, 1:] - base[:, 1:]).max()) > 1e-4


def test_3d_runs():
    em = _emulator(3, zero_init_out=False)
    x = _x((1, 2, 8, 8, 8, 2))
    kw = dict(periodic=(True, True, False), compression=(1, 4))
    v = _init(em, x, (1, 4), periodic=kw["periodic"])
    out = jax.jit(lambda v, x: em.apply(v, x, FIELD_IDS, **kw))(v, x)
    assert out.shape == (1, 1, 8, 8, 8, 2)
    assert np.all(np.isfinite(np.asarray(out)))


def test_jit_grad(em2d):
    em, v, x = em2d
    kw = dict(periodic=PERIODIC, compression=(2, 4))
    y = _x((1, 2, 16, 16, 2), seed=9)

    @jax.jit
    def loss_fn(params, x, y):
        return jnp.mean(jnp.abs(em.apply({"params": params}, x, FIELD_IDS, **kw) - y))

    loss, grads = jax.value_and_grad(loss_fn)(v["params"], x, y)
    assert np.isfinite(float(loss))
    g = nn.unbox(grads)
    assert all(np.all(np.isfinite(np.asarray(a))) for a in jax.tree.leaves(g))
    for sub in (g["tokeniser"]["encoder"], g["tokeniser"]["decoder"], g["processor"]):
        assert max(float(jnp.abs(a).max()) for a in jax.tree.leaves(sub)) > 0


def test_errors():
    em = Emulator(tokeniser=Tokeniser(**TOK), processor=Processor(latent_channels=3, **PROC))
    with pytest.raises(ValueError, match="latent_channels"):
        jax.eval_shape(lambda k: em.init(k, jnp.zeros((1, 2, 16, 16, 2)), FIELD_IDS, periodic=PERIODIC,
                                         compression=(1, 4)), jax.random.key(0))
    em = _emulator()
    with pytest.raises(ValueError, match="multiple of the temporal compression t=2"):
        jax.eval_shape(lambda k: em.init(k, jnp.zeros((1, 3, 16, 16, 2)), FIELD_IDS, periodic=PERIODIC,
                                         compression=(2, 4)), jax.random.key(0))
