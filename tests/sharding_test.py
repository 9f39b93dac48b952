"""Tests of tokpre/sharding.py and the sharded train state (tokpre/train/state.py).

In-process (one CPU device, abstract meshes): ``mesh_shape``, ``get_rules``, ``logical_to_sharding`` and
``opt_state_shardings`` on SOAP's state. In one subprocess with 8 simulated CPU devices (``XLA_FLAGS`` must be set
before JAX starts): two train steps of each stage (AE tokeniser, dyn emulator) under data parallel ``(8,1,1)``,
FSDP ``(1,8,1)`` and FSDP + tensor parallel ``(1,4,2)`` match a 1-device mesh; under FSDP every sharded parameter
is split 8 ways and the large ones are sharded; SOAP's state is created sharded.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import optax
import pytest
from jax.sharding import AbstractMesh, PartitionSpec as P

from tokpre import sharding as shd
from tokpre.train import optim


# ------------------------------------------------------------------------------------------------ in-process units

def test_mesh_shape_resolves_minus_one():
    assert shd.mesh_shape((-1, 1, 1), 8) == (8, 1, 1)
    assert shd.mesh_shape((1, -1, 2), 8) == (1, 4, 2)
    assert shd.mesh_shape((2, 2, 2), 8) == (2, 2, 2)


@pytest.mark.parametrize("shape,n,match", [
    ((3, 1, 1), 8, r"needs 3 devices, found 8"),
    ((-1, 3, 1), 8, r"8 devices are not divisible by 3"),
    ((-1, -1, 1), 8, r"at most one -1"),
    ((8, 1), 8, r"must have 3 entries"),
])
def test_mesh_shape_errors(shape, n, match):
    with pytest.raises(ValueError, match=match):
        shd.mesh_shape(shape, n)


def test_get_rules_presets_and_errors():
    assert shd.get_rules("dp") == ()
    assert dict(shd.get_rules("fsdp"))["embed"] == "fsdp"
    assert dict(shd.get_rules("fsdp_tp"))["heads"] == "model"
    assert shd.get_rules([["embed", "fsdp"], ("mlp", None)]) == (("embed", "fsdp"), ("mlp", None))
    with pytest.raises(ValueError, match=r"mesh.rules: unknown preset 'zero3'.*'dp', 'fsdp', 'fsdp_tp'"):
        shd.get_rules("zero3")


MESH = AbstractMesh((1, 4, 2), shd.MESH_AXES)


def test_logical_to_sharding_divisible_and_fallback():
    rules = shd.get_rules("fsdp_tp")
    # q/k/v kernel (embed, heads, kv): embed over fsdp (4), heads over model (2).
    assert shd.logical_to_sharding(("embed", "heads", "kv"), (32, 4, 8), MESH, rules).spec == P("fsdp", "model", None)
    # embed 6 does not divide fsdp=4 -> replicated on that axis; heads 3 does not divide model=2 -> replicated.
    assert shd.logical_to_sharding(("embed", "heads", "kv"), (6, 3, 8), MESH, rules).spec == P(None, None, None)
    # One mesh axis is used at most once per array: (vocab, embed) both map to fsdp; the first wins.
    assert shd.logical_to_sharding(("vocab", "embed"), (96, 32), MESH, rules).spec == P("fsdp", None)
    # Unlisted names, None names and None logical axes are replicated.
    assert shd.logical_to_sharding(("norm",), (32,), MESH, rules).spec == P(None)
    assert shd.logical_to_sharding(None, (32,), MESH, rules).spec == P()
    # A mesh axis of size 1 is never named (identical placement, simpler specs).
    one = AbstractMesh((8, 1, 1), shd.MESH_AXES)
    assert shd.logical_to_sharding(("embed", "mlp"), (32, 64), one, rules).spec == P(None, None)
    # Tuple mesh axes: the product of their sizes must divide.
    two = AbstractMesh((2, 4, 1), shd.MESH_AXES)
    r = (("embed", ("data", "fsdp")),)
    assert shd.logical_to_sharding(("embed",), (16,), two, r).spec == P(("data", "fsdp"))
    assert shd.logical_to_sharding(("embed",), (12,), two, r).spec == P(None)


def test_opt_state_shardings_soap_state():
    """Moments mirror their parameter's sharding; SOAP's (d, d) stats/bases use the fsdp axis; None stays None."""
    params = {"enc": {"kernel": jax.ShapeDtypeStruct((2, 2, 2, 8, 16), np.float32),
                      "bias": jax.ShapeDtypeStruct((16,), np.float32)},
              "norm": {"scale": jax.ShapeDtypeStruct((16,), np.float32)},   # same shape as bias, other spec
              "dense": {"kernel": jax.ShapeDtypeStruct((32, 64), np.float32)}}
    mesh = AbstractMesh((1, 8, 1), shd.MESH_AXES)
    rules = shd.get_rules("fsdp")
    p_sh = {"enc": {"kernel": shd.logical_to_sharding(("conv_t", "conv_h", "conv_w", "conv_in", "conv_out"),
                                                       (2, 2, 2, 8, 16), mesh, rules),
                    "bias": shd.logical_to_sharding(("conv_out",), (16,), mesh, rules)},
            "norm": {"scale": shd.logical_to_sharding(("norm",), (16,), mesh, rules)},
            "dense": {"kernel": shd.logical_to_sharding(("embed", "mlp"), (32, 64), mesh, rules)}}
    tx = optax.chain(optim.scale_by_soap(max_precond_dim=32), optax.scale(-1e-3))
    abstract = jax.eval_shape(tx.init, params)
    out = shd.opt_state_shardings(abstract, params, p_sh, mesh, rules)
    soap = out[0]
    assert soap.count.spec == P()
    assert soap.mu["enc"]["kernel"].spec == P(None, None, None, None, "fsdp")
    assert soap.nu["enc"]["bias"].spec == P("fsdp")
    assert soap.mu["norm"]["scale"].spec == P(None)           # a shape match alone must not decide
    assert soap.mu["dense"]["kernel"].spec == P("fsdp", None)
    # Stats/bases: conv axes (2, 2) cannot split 8 ways -> replicated; (8, 8) and (16, 16) over fsdp.
    st = soap.stats["enc"]["kernel"]
    assert [s.spec for s in st] == [P(), P(), P(), P("fsdp", None), P("fsdp", None)]
    assert soap.stats["dense"]["kernel"][0].spec == P("fsdp", None)
    assert soap.bases["dense"]["kernel"][1] is None            # 64 > max_precond_dim: identity axis
    assert soap.stats["enc"]["bias"] == (None,)               # 1-D params are not preconditioned
    # Data parallel rules: everything replicated.
    dp = shd.opt_state_shardings(abstract, params, jax.tree.map(lambda _: shd.NamedSharding(mesh, P()), p_sh),
                                 mesh, shd.get_rules("dp"))
    assert all(s.spec == P() for s in jax.tree.leaves(dp))


def test_maybe_initialize_distributed_needs_process_count(monkeypatch):
    monkeypatch.delenv("TOKPRE_NUM_PROCESSES", raising=False)
    monkeypatch.delenv("TOKPRE_PROCESS_ID", raising=False)
    with pytest.raises(ValueError, match=r"distributed.num_processes or the environment variable TOKPRE_NUM_"):
        shd.maybe_initialize_distributed({"coordinator_address": "localhost:1", "num_processes": 0})
    with pytest.raises(ValueError, match=r"process id 3 is outside \[0, 2\)"):
        shd.maybe_initialize_distributed({"coordinator_address": "localhost:1", "num_processes": 2,
                                          "process_id": 3})
    assert not jax.distributed.is_initialized()


# ------------------------------------------------------------------------------------------------ 8 CPU devices

# 8 host devices; cheap LLVM code generation (compiling dominates this test; numerics are unchanged).
XLA_FLAGS = ("--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0 "
             "--xla_llvm_disable_expensive_passes=true")

CHILD = "XLA_FLAGS = " + repr(XLA_FLAGS) + textwrap.dedent(r'''
    import json, os, sys
    os.environ["XLA_FLAGS"] = XLA_FLAGS
    os.environ["JAX_PLATFORMS"] = "cpu"
    import jax, numpy as np
    from tokpre import sharding as shd
    from tokpre.config import base_config, optimizer_config
    from tokpre.train import ae, common, dyn
    from tokpre.train.state import make_train_step

    out = sys.argv[1]
    assert jax.device_count() == 8, jax.devices()
    cfg = base_config()
    cfg.model.tokeniser.update(widths=(8, 16), latent_channels=8, depth=0, spatial_factors=(4,),
                               temporal_factors=(1,))
    cfg.model.processor.update(d_model=32, num_layers=1, num_heads=4, mlp_ratio=2)
    cfg.ae.optimizer = optimizer_config("adamw", 1e-3, 10)
    cfg.dyn.optimizer = optimizer_config("adamw", 1e-3, 10)
    for o in (cfg.ae.optimizer, cfg.dyn.optimizer):
        o.warmup_steps = 0          # full lr from the first step, so both steps move the parameters
    cfg.dyn.update(tokeniser="scratch", compression=(1, 4), n_steps_input=2)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 2, 16, 16, 2)).astype(np.float32)      # (B, T, H, W, C)
    y = rng.standard_normal((8, 1, 16, 16, 2)).astype(np.float32)      # (B, 1, H, W, C)
    ids = np.array([3, 5], np.int32)
    arrays, info = {}, {}

    def record(tag, state, losses):
        *losses, moved = losses
        arrays[f"{tag}/moved"] = np.asarray(moved)     # max |param change| over the two steps
        for i, l in enumerate(losses):
            arrays[f"{tag}/loss{i}"] = np.asarray(l)
        leaves = {}
        for p, v in jax.tree_util.tree_flatten_with_path(state.params)[0]:
            k = jax.tree_util.keystr(p)
            arrays[f"{tag}/params{k}"] = np.asarray(v)
            shards = v.addressable_shards
            leaves[k] = {"shape": list(v.shape), "spec": str(v.sharding.spec),
                         "shard_shapes": [list(s.data.shape) for s in shards],
                         "n_distinct": len({str(s.index) for s in shards})}
        info[tag] = leaves

    def two_steps(mesh, state, state_sh, loss_fn, tx, batch, trainable=None):
        init = [np.asarray(v) for v in jax.tree.leaves(state.params)]
        steps = common.CompiledSteps(lambda k: make_train_step(loss_fn, tx, trainable), state_sh, mesh)
        b = shd.global_batch(batch, mesh)
        losses = []
        for _ in range(2):
            state, m = steps(("k",), state, b)
            losses.append(float(m["loss"]))
        moved = max(float(np.max(np.abs(np.asarray(v) - a))) for v, a in zip(jax.tree.leaves(state.params), init))
        return state, losses + [moved]

    for tag, shape, rules in [("one", (1, 1, 1), "dp"), ("dp", (8, 1, 1), "dp"), ("fsdp", (1, 8, 1), "fsdp"),
                              ("fsdp_tp", (1, 4, 2), "fsdp_tp")]:
        cfg.mesh.rules = rules
        mesh = shd.make_mesh(shape, jax.devices()[: int(np.prod(shape))])
        model, tx, state, state_sh = ae.build(cfg, mesh)
        lf = ae.make_loss_fn(model, periodic=(True, True), compression=(1, 4), loss="mse", jitter=False)
        state, losses = two_steps(mesh, state, state_sh, lf, tx, {"input_fields": x, "field_ids": ids})
        record(f"ae/{tag}", state, losses)
        model, comp, mode, trainable, tx, _, state, state_sh = dyn.build(cfg, mesh)
        lf = dyn.make_field_loss(model, periodic=(True, True), comp=comp, kind="mse")
        state, losses = two_steps(mesh, state, state_sh, lf, tx,
                                  {"input_fields": x, "output_fields": y, "field_ids": ids}, trainable)
        record(f"dyn/{tag}", state, losses)

    # SOAP's state created sharded under FSDP (creation only: a SOAP step compiles for long on 2 CPU cores).
    cfg.mesh.rules = "fsdp"
    cfg.ae.optimizer = optimizer_config("soap", 1e-3, 10)
    mesh = shd.make_mesh((1, 8, 1))
    _, _, state, _ = ae.build(cfg, mesh)
    soap = []
    for p, v in jax.tree_util.tree_flatten_with_path(state.opt_state)[0]:
        soap.append({"path": jax.tree_util.keystr(p), "shape": list(v.shape), "spec": str(v.sharding.spec),
                     "shard_shape": list(v.addressable_shards[0].data.shape)})
    info["soap"] = soap
    np.savez(os.path.join(out, "arrays.npz"), **arrays)
    with open(os.path.join(out, "info.json"), "w") as f:
        json.dump(info, f)
    print("child done", flush=True)
''')


@pytest.fixture(scope="module")
def eight_devices(tmp_path_factory):
    out = tmp_path_factory.mktemp("eight_devices")
    script = out / "child.py"
    script.write_text(CHILD)
    env = {**os.environ, "XLA_FLAGS": XLA_FLAGS, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, str(script), str(out)], env=env, capture_output=True, text=True,
                          timeout=900)
    if proc.returncode != 0:
        pytest.fail(f"8-device child failed (rc {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    arrays = dict(np.load(out / "arrays.npz"))
    info = json.loads((out / "info.json").read_text())
    return arrays, info


@pytest.mark.parametrize("stage", ["ae", "dyn"])
@pytest.mark.parametrize("tag", ["dp", "fsdp", "fsdp_tp"])
def test_sharded_step_matches_one_device(eight_devices, stage, tag):
    arrays, _ = eight_devices
    ref_keys = sorted(k for k in arrays if k.startswith(f"{stage}/one/") and not k.endswith("/moved"))
    assert any("/params" in k for k in ref_keys) and f"{stage}/one/loss1" in ref_keys
    for k in ref_keys:
        other = k.replace(f"{stage}/one/", f"{stage}/{tag}/", 1)
        np.testing.assert_allclose(arrays[other], arrays[k], rtol=1e-4, atol=1e-5,
                                   err_msg=f"{stage} under {tag}: {k.split('/', 2)[2]} differs from 1 device")
    # The steps really trained: otherwise agreement of the parameters would prove little.
    assert arrays[f"{stage}/one/loss1"] != arrays[f"{stage}/one/loss0"]
    assert float(arrays[f"{stage}/one/moved"]) > 5e-4


@pytest.mark.parametrize("stage", ["ae", "dyn"])
def test_fsdp_holds_one_eighth_of_every_sharded_param(eight_devices, stage):
    _, info = eight_devices
    leaves = info[f"{stage}/fsdp"]
    sharded = []
    for path, v in leaves.items():
        size = int(np.prod(v["shape"]))
        per_dev = {int(np.prod(s)) for s in v["shard_shapes"]}
        assert len(v["shard_shapes"]) == 8
        if "fsdp" in v["spec"]:
            assert per_dev == {size // 8}, f"{path}: spec {v['spec']}, shard shapes {v['shard_shapes']}"
            assert v["n_distinct"] == 8, f"{path}: shards are not 8 distinct pieces"
            sharded.append(path)
        else:
            assert per_dev == {size}, f"{path}: unsharded spec {v['spec']} but shards {v['shard_shapes']}"
    # Every large parameter (conv kernels, dense kernels, field tables) is sharded.
    large = [p for p, v in leaves.items() if len(v["shape"]) >= 2]
    assert large and set(large) <= set(sharded), f"not sharded under FSDP: {sorted(set(large) - set(sharded))}"
    if stage == "dyn":
        assert any("processor" in p and "mlp" in p for p in sharded)


def test_fsdp_tp_shards_heads_over_model(eight_devices):
    _, info = eight_devices
    leaves = info["dyn/fsdp_tp"]
    q = leaves["['processor']['block_0']['space_attn']['query']['kernel']"]
    assert q["spec"] == str(P("fsdp", "model", None))
    assert q["shard_shapes"] == [[32 // 4, 4 // 2, 8]] * 8
    wi = leaves["['processor']['block_0']['mlp']['wi']['kernel']"]
    assert wi["spec"] == str(P("fsdp", "model"))


def test_soap_state_created_sharded(eight_devices):
    _, info = eight_devices
    soap = info["soap"]
    stats = [s for s in soap if ".stats" in s["path"] or ".bases" in s["path"]]
    mus = [s for s in soap if ".mu" in s["path"]]
    assert stats and mus
    big = [s for s in stats if s["shape"][0] % 8 == 0]
    assert big, "expected (d, d) SOAP statistics with d divisible by 8"
    for s in big:
        assert s["spec"] == str(P("fsdp", None)), s
        assert s["shard_shape"] == [s["shape"][0] // 8, s["shape"][1]], s
    kern = [s for s in mus if s["path"].endswith("['encoder']['down1']['kernel']")]
    assert kern and kern[0]["shard_shape"][-1] * 8 == kern[0]["shape"][-1]
