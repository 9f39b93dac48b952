"""Tests for tokpre/models/processor.py (tiny shapes, CPU)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tokpre.models.processor import Processor, apply_rope, axial_rope


def _proc(**kw):
    base = dict(d_model=32, num_layers=1, num_heads=2, mlp_ratio=2, latent_channels=4)
    base.update(kw)
    return Processor(**base)


def _init(p, z):
    """Jitted init (eager init dispatches every op separately, which is slow on CPU)."""
    return jax.jit(p.init)(jax.random.key(1), z)


def _apply(p, v, z, method="__call__", **kw):
    """Jitted apply: one XLA compile is much cheaper on CPU than op-by-op dispatch of an eager apply."""
    return jax.jit(lambda v, z: p.apply(v, z, method=method, **kw))(v, z)


def _z(shape, seed=0):
    return jax.random.normal(jax.random.key(seed), shape, jnp.float32)


@pytest.fixture(scope="module")
def rand2d():
    """One random-out-projection processor with jitted predict_all / __call__, shared to save compiles."""
    p = _proc(zero_init_out=False)
    z = _z((2, 3, 4, 4, 4))
    v = _init(p, z)
    fwd_all = jax.jit(lambda v, z: p.apply(v, z, method="predict_all"))
    fwd_last = jax.jit(lambda v, z: p.apply(v, z))
    return p, v, z, fwd_all, fwd_last


def test_shapes_and_call_is_last_of_predict_all(rand2d):
    _, v, z, fwd_all, fwd_last = rand2d
    out, allp = fwd_last(v, z), fwd_all(v, z)
    assert out.shape == (2, 1, 4, 4, 4) and out.dtype == jnp.float32
    assert allp.shape == z.shape
    np.testing.assert_allclose(out, allp[:, -1:], rtol=1e-6, atol=1e-6)
    assert np.all(np.isfinite(np.asarray(allp)))
    # A random out-projection makes the increment non-zero.
    assert float(jnp.abs(out - z[:, -1:]).max()) > 1e-3


def test_3d_latent():
    p = _proc(zero_init_out=False)
    z = _z((1, 2, 2, 3, 4, 4))
    v = _init(p, z)
    out = _apply(p, v, z)
    assert out.shape == (1, 1, 2, 3, 4, 4)
    assert np.all(np.isfinite(np.asarray(out)))
    assert float(jnp.abs(out - z[:, -1:]).max()) > 1e-3


def test_zero_init_out_is_persistence(rand2d):
    _, v, z, _, fwd_last = rand2d
    p0 = _proc()
    v0 = _init(p0, z)
    assert not np.any(np.asarray(nn.unbox(v0)["params"]["out_proj"]["kernel"]))
    np.testing.assert_array_equal(_apply(p0, v0, z), z[:, -1:])
    # Same tree, so the random params with a zeroed out-projection give persistence through the shared jit too;
    # without predict_increment a zero out-projection predicts zeros.
    v_zero = jax.tree.map(lambda x: x, v)
    v_zero["params"]["out_proj"]["kernel"] = v_zero["params"]["out_proj"]["kernel"].replace_boxed(
        jnp.zeros_like(nn.unbox(v)["params"]["out_proj"]["kernel"]))
    np.testing.assert_array_equal(fwd_last(v_zero, z), z[:, -1:])
    p_abs = _proc(predict_increment=False)
    np.testing.assert_array_equal(_apply(p_abs, v_zero, z), np.zeros((2, 1, 4, 4, 4), np.float32))


@pytest.mark.parametrize("j", [1, 2])
def test_causal_in_time(rand2d, j):
    _, v, z, fwd_all, _ = rand2d
    t = z.shape[1]
    base = fwd_all(v, z)
    pert = fwd_all(v, z.at[:, j].add(_z(z[:, j].shape, seed=7)))
    np.testing.assert_allclose(pert[:, :j], base[:, :j], rtol=1e-5, atol=1e-5)
    # Positions >= j must see the change (time attention actually mixes frames).
    for i in range(j, t):
        assert float(jnp.abs(pert[:, i] - base[:, i]).max()) > 1e-4, f"position {i} ignored frame {j}"


def test_past_frames_and_other_tokens_matter(rand2d):
    """The last prediction depends on frame 0 (time mixing) and on other grid tokens (space mixing)."""
    _, v, z, _, fwd_last = rand2d
    base = fwd_last(v, z)
    assert float(jnp.abs(fwd_last(v, z.at[:, 0].add(1.0)) - base).max()) > 1e-4
    z_s = z.at[:, :, 0, 0].add(1.0)  # token (0, 0) in every frame
    diff = jnp.abs(fwd_last(v, z_s) - base)[:, 0, 3, 3]  # a far-away token
    assert float(diff.max()) > 1e-4


def test_axial_rope_is_relative():
    """Scores <rope(q, p), rope(k, p')> depend only on p - p' per axis."""
    q = _z((1, 1, 1, 8), seed=1)
    k = _z((1, 1, 1, 8), seed=2)

    def score(pq, pk):
        qr = apply_rope(q, jnp.array([pq], jnp.float32), 100.0, 8)
        kr = apply_rope(k, jnp.array([pk], jnp.float32), 100.0, 8)
        return float(jnp.sum(qr * kr))

    assert score(3.0, 1.0) == pytest.approx(score(7.0, 5.0), rel=1e-5, abs=1e-5)
    assert score(3.0, 1.0) != pytest.approx(score(3.0, 2.0), rel=1e-3)
    # Axial 2-D: tokens on a 3x3 grid; shifting both by (1, 1) keeps every score.
    qs = jnp.broadcast_to(q, (1, 9, 1, 8))
    ks = jnp.broadcast_to(k, (1, 9, 1, 8))
    qr, kr = axial_rope(qs, (3, 3), 100.0), axial_rope(ks, (3, 3), 100.0)
    s = jnp.einsum("bqhk,bshk->qs", qr, kr)
    # index = 3 * row + col; pair (0,0)->(1,1) vs (1,1)->(2,2)
    assert float(s[0, 4]) == pytest.approx(float(s[4, 8]), rel=1e-5, abs=1e-5)
    assert float(s[0, 1]) != pytest.approx(float(s[0, 3]), rel=1e-3)  # the two axes are distinguished
    # Norm is preserved (rotation).
    np.testing.assert_allclose(jnp.linalg.norm(qr, axis=-1), jnp.linalg.norm(qs, axis=-1), rtol=1e-5)


def test_logical_axes():
    p = _proc()
    v = _init(p, _z((1, 2, 4, 4, 4)))
    specs = nn.get_partition_spec(v)["params"]
    assert tuple(specs["in_proj"]["kernel"]) == ("latent", "embed")
    assert tuple(specs["out_proj"]["kernel"]) == ("embed", "latent")
    assert tuple(specs["final_norm"]["scale"]) == ("norm",)
    blk = specs["block_0"]
    for attn in ("space_attn", "time_attn"):
        for name in ("query", "key", "value"):
            assert tuple(blk[attn][name]["kernel"]) == ("embed", "heads", "kv")
        assert tuple(blk[attn]["out"]["kernel"]) == ("heads", "kv", "embed")
        assert tuple(blk[attn]["query_norm"]["scale"]) == ("norm",)
    assert tuple(blk["mlp"]["wi"]["kernel"]) == ("embed", "mlp")
    assert tuple(blk["mlp"]["wo"]["kernel"]) == ("mlp", "embed")
    # Every leaf is partitioned (no unnamed parameter would escape the sharding rules).
    leaves = jax.tree.leaves(v["params"], is_leaf=lambda x: isinstance(x, nn.Partitioned))
    assert all(isinstance(x, nn.Partitioned) for x in leaves)


def test_jit_grad_remat_dropout():
    """Rematerialised blocks with dropout: jit + grad run and every parameter gets a finite non-zero gradient."""
    p = _proc(zero_init_out=False, remat=True, dropout_rate=0.1)
    z = _z((2, 3, 4, 4, 4))
    v = _init(p, z)

    @jax.jit
    def loss_fn(params, z, key):
        pred = p.apply({"params": params}, z, method="predict_all", deterministic=False, rngs={"dropout": key})
        return jnp.mean(jnp.square(pred[:, :-1] - z[:, 1:]))

    loss, grads = jax.value_and_grad(loss_fn)(v["params"], z, jax.random.key(3))
    assert np.isfinite(float(loss))
    for path, g in jax.tree_util.tree_leaves_with_path(nn.unbox(grads)):
        assert np.all(np.isfinite(np.asarray(g))), path
        assert float(jnp.abs(g).max()) > 0, f"zero gradient at {jax.tree_util.keystr(path)}"


def test_zero_init_out_still_trains():
    """At zero init only the out-projection gets gradient; it is non-zero, so training can start."""
    p = _proc()
    z = _z((2, 3, 4, 4, 4))
    v = _init(p, z)
    g = jax.jit(jax.grad(lambda prm: jnp.mean(jnp.square(p.apply({"params": prm}, z) - 1.0))))(v["params"])
    assert float(jnp.abs(nn.unbox(g)["out_proj"]["kernel"]).max()) > 0


def test_bfloat16_compute():
    p = _proc(zero_init_out=False, dtype=jnp.bfloat16)
    z = _z((1, 2, 4, 4, 4))
    v = _init(p, z)
    out = _apply(p, v, z)
    assert out.dtype == jnp.float32 and out.shape == (1, 1, 4, 4, 4)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(nn.unbox(v)))


def test_errors_name_the_problem():
    p = _proc()
    with pytest.raises(ValueError, match="latent_channels=4"):
        p.init(jax.random.key(0), _z((1, 2, 4, 4, 5)))
    with pytest.raises(ValueError, match="2 or 3 grid axes"):
        p.init(jax.random.key(0), _z((1, 2, 4, 4)))
    with pytest.raises(ValueError, match="not divisible by num_heads"):
        _proc(d_model=30, num_heads=4).init(jax.random.key(0), _z((1, 2, 4, 4, 4)))
