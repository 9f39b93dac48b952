"""Tests of the Grain input pipeline on tiny Well files written in tmp_path."""

import json
import os

import jax.numpy as jnp
import numpy as np
import pytest

from tokpre.data import pipeline, well
from tokpre.data.fields import FieldVocab

NX, NY = 8, 6
TOY_CHANNELS = ["density", "velocity_x", "velocity_y", "D_xx", "D_xy", "D_yx", "D_yy"]


def _write_split(base, name, split, files, *, bcs, nx=NX, ny=NY, const=True, params=None):
    """files: list of dicts {t0: {...}, t1: {...}, t2: {...}} of (B, T, ...) arrays."""
    d = os.path.join(base, name, "data", split)
    os.makedirs(d, exist_ok=True)
    for k, fields in enumerate(files):
        b, t = next(iter(fields["t0"].values())).shape[:2]
        rng = np.random.default_rng(1000 + k)
        well.write_well_file(
            os.path.join(d, f"{name}_{k}.hdf5"), dataset_name=name, spatial_dims=["x", "y"],
            coords={"x": np.linspace(0, 1, nx, dtype=np.float32), "y": np.linspace(0, 1, ny, dtype=np.float32)},
            time=np.arange(t, dtype=np.float32),
            t0_fields=fields["t0"], t1_fields=fields.get("t1", {}), t2_fields=fields.get("t2", {}),
            constant_t0_fields=({"mask": rng.random((b, nx, ny)).astype(np.float32)} if const else {}),
            boundary_conditions=bcs, params=params or {})


def _toy_fields(rng, b, t, nx=NX, ny=NY):
    return {
        "t0": {"density": (1.0 + rng.random((b, t, nx, ny))).astype(np.float32)},
        "t1": {"velocity": (0.3 + rng.standard_normal((b, t, nx, ny, 2))).astype(np.float32)},
        "t2": {"D": rng.standard_normal((b, t, nx, ny, 2, 2)).astype(np.float32)},
    }


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """toy: 7 channels, x PERIODIC / y WALL, constant field + scalar. toy2: energy, pressure, all periodic."""
    root = str(tmp_path_factory.mktemp("well"))
    rng = np.random.default_rng(0)
    toy_bcs = {"x": "PERIODIC", "y": "WALL"}
    _write_split(root, "toy", "train", [_toy_fields(rng, 2, 6), _toy_fields(rng, 2, 6)], bcs=toy_bcs,
                 params={"gamma": 1.4})
    _write_split(root, "toy", "valid", [_toy_fields(rng, 1, 6)], bcs=toy_bcs, params={"gamma": 1.4})
    well.write_stats(os.path.join(root, "toy"))
    t0 = {"energy": (2.0 + rng.random((3, 5, 4, 4))).astype(np.float32),
          "pressure": (0.5 + rng.random((3, 5, 4, 4))).astype(np.float32)}
    _write_split(root, "toy2", "train", [{"t0": t0}], bcs={"x": "PERIODIC", "y": "PERIODIC"}, nx=4, ny=4,
                 const=False)
    well.write_stats(os.path.join(root, "toy2"))
    # one window only (T = n_in + n_out = 2), for the augmentation tests
    _write_split(root, "single", "train", [_toy_fields(rng, 1, 2)], bcs=toy_bcs, const=False)
    well.write_stats(os.path.join(root, "single"))
    # density = 1 + t exactly, to read the stride of a window
    ramp = _toy_fields(rng, 1, 8)
    ramp["t0"]["density"] = np.broadcast_to((1.0 + np.arange(8, dtype=np.float32))[None, :, None, None],
                                            (1, 8, NX, NY)).copy()
    _write_split(root, "ramp", "train", [ramp], bcs=toy_bcs, const=False)
    well.write_stats(os.path.join(root, "ramp"))
    return root


def _train(base, names="toy", **kw):
    args = dict(n_steps_input=2, n_steps_output=1, batch_size=3, seed=0, shard_index=0, shard_count=1)
    args.update(kw)
    return pipeline.make_train_iterator(base, names, **args)


def test_train_batch_matches_contract(base):
    b = next(_train(base))
    assert b["input_fields"].shape == (3, 2, NX, NY, 7) and b["input_fields"].dtype == np.float32
    assert b["output_fields"].shape == (3, 1, NX, NY, 7) and b["output_fields"].dtype == np.float32
    np.testing.assert_array_equal(b["field_ids"], FieldVocab().ids(TOY_CHANNELS))
    assert b["field_ids"].dtype == np.int32
    np.testing.assert_array_equal(b["boundary"], [[well.PERIODIC, well.PERIODIC], [well.WALL, well.WALL]])
    assert b["boundary"].dtype == np.int32
    assert b["constant_fields"].shape == (3, NX, NY, 1)
    assert b["constant_scalars"].shape == (3, 1)
    np.testing.assert_allclose(b["constant_scalars"], 1.4, rtol=1e-6)
    assert np.isfinite(b["input_fields"]).all()
    b0 = next(_train(base, n_steps_output=0, n_steps_input=1))
    assert "output_fields" not in b0 and b0["input_fields"].shape == (3, 1, NX, NY, 7)


def test_eval_batches_deterministic_and_normalised(base):
    split = well.WellSplit(base, "toy", "valid")
    n = split.num_windows(2, 1, 1)  # 1 traj x (6 - 2) = 4
    ev = pipeline.make_eval_batches(base, "toy", split="valid", n_steps_input=2, n_steps_output=1, batch_size=3,
                                    shard_index=0, shard_count=1)
    assert n == 4 and len(ev) == 1  # drop_last: the 4th window is dropped
    first, again = list(ev), list(ev)
    assert len(first) == 1
    np.testing.assert_array_equal(first[0]["input_fields"], again[0]["input_fields"])
    norm = pipeline.get_normaliser(base, "toy")
    for i in range(3):  # Well order: window i = (file 0, traj 0, t0 = i)
        w = split.read_window(*split.locate(i, 2, 1, 1), 2, 1, 1)
        np.testing.assert_allclose(first[0]["input_fields"][i], norm.normalise(w["input_fields"]), atol=1e-5)
        np.testing.assert_allclose(first[0]["output_fields"][i], norm.normalise(w["output_fields"]), atol=1e-5)
    keep = pipeline.make_eval_batches(base, "toy", split="valid", n_steps_input=2, n_steps_output=1, batch_size=3,
                                      drop_last=False, shard_index=0, shard_count=1)
    assert [b["input_fields"].shape[0] for b in keep] == [3, 1]
    capped = pipeline.make_eval_batches(base, "toy", split="valid", n_steps_input=1, n_steps_output=0,
                                        batch_size=1, max_batches=2, shard_index=0, shard_count=1)
    assert len(capped) == 2 and len(list(capped)) == 2
    # A capped evaluation spreads its windows over the split (here windows 0 and n/2), not the first ones.
    n_valid = split.num_windows(1, 0, 1)
    for b, i in zip(capped, (0, n_valid // 2)):
        w = split.read_window(*split.locate(i, 1, 0, 1), 1, 0, 1)
        np.testing.assert_allclose(b["input_fields"][0], norm.normalise(w["input_fields"]), atol=1e-5)


def test_spread_window_indices_cover_the_split_evenly():
    assert pipeline.spread_window_indices(10, None, 4, 1) == list(range(10))
    assert pipeline.spread_window_indices(10, 3, 4, 1) == list(range(10))      # 12 >= 10: everything
    assert pipeline.spread_window_indices(480, 2, 4, 1) == [0, 60, 120, 180, 240, 300, 360, 420]
    idx = pipeline.spread_window_indices(480, 3, 8, 2)                             # 2 processes x 3 x 8
    assert len(idx) == 48 and len(set(idx)) == 48 and idx[0] == 0 and idx[-1] == 470


def test_stats_normalisation_zero_mean_unit_std_on_train(base):
    ev = pipeline.make_eval_batches(base, "toy", split="train", n_steps_input=1, n_steps_output=0, batch_size=1,
                                    shard_index=0, shard_count=1)
    x = np.concatenate([b["input_fields"].reshape(-1, 7) for b in ev]).astype(np.float64)
    assert x.shape[0] == 2 * 2 * 6 * NX * NY  # every train frame once
    np.testing.assert_allclose(x.mean(0), 0.0, atol=2e-3)
    np.testing.assert_allclose(x.std(0), 1.0, atol=2e-3)


def test_normaliser_round_trip_numpy_and_jax(base):
    norm = pipeline.get_normaliser(base, "toy")
    x = np.random.default_rng(1).standard_normal((2, 3, NX, NY, 7)).astype(np.float32) + 1.5
    z = norm.normalise(x)
    assert isinstance(z, np.ndarray) and z.dtype == np.float32
    np.testing.assert_allclose(norm.denormalise(z), x, atol=1e-5)
    zj = norm.normalise(jnp.asarray(x))
    assert not isinstance(zj, np.ndarray)
    np.testing.assert_allclose(np.asarray(zj), z, atol=1e-5)
    np.testing.assert_allclose(np.asarray(norm.denormalise(zj)), x, atol=1e-5)
    assert np.all(norm.std >= pipeline.MIN_STD)
    clipped = pipeline.Normaliser(("a",), np.zeros(1), np.zeros(1), np.zeros(1, bool))
    np.testing.assert_allclose(clipped.normalise(np.ones((2, 1), np.float32)), 1.0 / pipeline.MIN_STD, rtol=1e-6)


def test_log_transform_round_trip_and_stats(base):
    norm = pipeline.get_normaliser(base, "toy", log_fields=("density",))
    assert norm.log_fields == ("density",)
    assert os.path.exists(os.path.join(base, "toy", pipeline.LOG_STATS_FILE))
    x = np.random.default_rng(2).standard_normal((4, NX, NY, 7)).astype(np.float32)
    x[..., 0] = np.exp(x[..., 0])  # positive density
    z = norm.normalise(x)
    np.testing.assert_allclose(z[..., 0], (np.log(x[..., 0]) - norm.mean[0]) / norm.std[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(norm.denormalise(z), x, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(norm.denormalise(norm.normalise(jnp.asarray(x)))), x, rtol=1e-5,
                               atol=1e-5)
    with pytest.raises(ValueError, match="strictly positive"):
        norm.normalise(-np.abs(x))
    with pytest.raises(ValueError, match="data.log_fields"):
        pipeline.get_normaliser(base, "toy", log_fields=("temperature",))
    # stats of the log values: all train frames -> ~zero mean / unit std for the log channel
    ev = pipeline.make_eval_batches(base, "toy", split="train", n_steps_input=1, n_steps_output=0, batch_size=4,
                                    log_fields=("density",), shard_index=0, shard_count=1)
    d = np.concatenate([b["input_fields"][..., 0].ravel() for b in ev])
    assert abs(d.mean()) < 1e-3 and abs(d.std() - 1.0) < 1e-3


def test_component_axes_and_flip_signs():
    axes = pipeline.component_axes(TOY_CHANNELS, ("x", "y"))
    assert axes == [(), (0,), (1,), (0, 0), (0, 1), (1, 0), (1, 1)]
    np.testing.assert_array_equal(pipeline.flip_signs(axes, [0]), [1, -1, 1, 1, -1, -1, 1])
    np.testing.assert_array_equal(pipeline.flip_signs(axes, [1]), [1, 1, -1, 1, -1, -1, 1])
    np.testing.assert_array_equal(pipeline.flip_signs(axes, [0, 1]), [1, -1, -1, 1, 1, 1, 1])
    assert pipeline.component_axes(["momentum_z", "c_zz"], ("x", "y", "z")) == [(2,), (2, 2)]


def _raw_single(base):
    split = well.WellSplit(base, "single", "train")
    assert split.num_windows(1, 1, 1) == 1
    return split.read_window(0, 0, 0, 1, 1, 1)


def test_flips_negate_the_right_components(base):
    raw = _raw_single(base)
    norm = pipeline.get_normaliser(base, "single")
    it = _train(base, "single", n_steps_input=1, n_steps_output=1, batch_size=1, roll=False, flip=True)
    seen = set()
    for _ in range(24):
        b = next(it)
        x = norm.denormalise(b["input_fields"][0])  # (1, NX, NY, 7)
        y = norm.denormalise(b["output_fields"][0])
        match = []
        for fx in (False, True):
            for fy in (False, True):
                flipped = [a for a, f in ((0, fx), (1, fy)) if f]
                ref = raw["input_fields"]
                ref_y = raw["output_fields"]
                if flipped:
                    ref = np.flip(ref, axis=tuple(1 + a for a in flipped))
                    ref_y = np.flip(ref_y, axis=tuple(1 + a for a in flipped))
                sx = -1.0 if fx else 1.0
                sy = -1.0 if fy else 1.0
                # density, velocity_x, velocity_y, D_xx, D_xy, D_yx, D_yy
                signs = np.array([1, sx, sy, 1, sx * sy, sx * sy, 1], np.float32)
                if np.allclose(x, ref * signs, atol=1e-4) and np.allclose(y, ref_y * signs, atol=1e-4):
                    match.append((fx, fy))
        assert len(match) == 1, match
        seen.add(match[0])
    assert seen == {(False, False), (False, True), (True, False), (True, True)}
    # the x flip alone: velocity_x and D_xy change sign, velocity_y and D_xx do not
    w = pipeline.flip_window(raw, [0], pipeline.flip_signs(pipeline.component_axes(TOY_CHANNELS, "xy"), [0]))
    np.testing.assert_array_equal(w["input_fields"][..., 1], -raw["input_fields"][:, ::-1, :, 1])
    np.testing.assert_array_equal(w["input_fields"][..., 2], raw["input_fields"][:, ::-1, :, 2])
    np.testing.assert_array_equal(w["input_fields"][..., 3], raw["input_fields"][:, ::-1, :, 3])
    np.testing.assert_array_equal(w["input_fields"][..., 4], -raw["input_fields"][:, ::-1, :, 4])


def test_roll_only_on_periodic_axes(base):
    raw = _raw_single(base)["input_fields"]
    norm = pipeline.get_normaliser(base, "single")
    it = _train(base, "single", n_steps_input=1, n_steps_output=1, batch_size=1, roll=True, flip=False)
    shifts = set()
    for _ in range(12):
        x = norm.denormalise(next(it)["input_fields"][0])
        found = [s for s in range(NX) if np.allclose(x, np.roll(raw, s, axis=1), atol=1e-4)]
        assert len(found) == 1, "sample is not an x-roll of the window (y is WALL and must not move)"
        shifts.add(found[0])
    assert len(shifts) > 1


def test_random_dt_within_limits(base):
    norm = pipeline.get_normaliser(base, "ramp")
    it = _train(base, "ramp", n_steps_input=2, n_steps_output=1, batch_size=1, min_dt=1, max_dt=2, flip=False,
                roll=False)
    strides = set()
    for _ in range(30):
        b = next(it)
        t = np.concatenate([norm.denormalise(b["input_fields"][0])[:, 0, 0, 0],
                            norm.denormalise(b["output_fields"][0])[:, 0, 0, 0]]) - 1.0
        t = np.round(t).astype(int)
        d = np.diff(t)
        assert d[0] == d[1] and d[0] in (1, 2) and t[-1] <= 7, t
        strides.add(int(d[0]))
    assert strides == {1, 2}


def _window_ids(base, batches):
    """Index of each sample in the Well order of toy/train (n_in=1, n_out=0) by exact content."""
    ev = pipeline.make_eval_batches(base, "toy", split="train", n_steps_input=1, n_steps_output=0, batch_size=1,
                                    shard_index=0, shard_count=1)
    ref = np.stack([b["input_fields"][0] for b in ev])
    ids = []
    for b in batches:
        for x in b["input_fields"]:
            hit = np.flatnonzero(np.all(np.isclose(ref, x[None], atol=1e-6), axis=tuple(range(1, ref.ndim))))
            assert len(hit) == 1
            ids.append(int(hit[0]))
    return ids, len(ref)


def test_shards_disjoint_and_cover_an_epoch(base):
    kw = dict(n_steps_input=1, n_steps_output=0, batch_size=2, flip=False, roll=False, seed=3)
    n = well.WellSplit(base, "toy", "train").num_windows(1, 0, 1)  # 24
    got = []
    for shard in (0, 1):
        it = _train(base, shard_index=shard, shard_count=2, **kw)
        ids, total = _window_ids(base, [next(it) for _ in range(n // 2 // 2)])
        assert len(set(ids)) == len(ids) == n // 2
        got.append(set(ids))
    assert total == n
    assert not got[0] & got[1]
    assert got[0] | got[1] == set(range(n))
    # the next epoch is reshuffled
    it = _train(base, shard_index=0, shard_count=1, **kw)
    e1, _ = _window_ids(base, [next(it) for _ in range(n // 2)])
    e2, _ = _window_ids(base, [next(it) for _ in range(n // 2)])
    assert sorted(e1) == sorted(e2) == list(range(n)) and e1 != e2


def test_iterator_state_restore_gives_same_batches(base):
    kw = dict(max_dt=2, batch_size=2, seed=7)
    it = _train(base, **kw)
    for _ in range(3):
        next(it)
    state = json.loads(json.dumps(it.get_state()))
    expected = [next(it) for _ in range(4)]
    it2 = _train(base, **kw)
    it2.set_state(state)
    for want in expected:
        got = next(it2)
        assert got.keys() == want.keys()
        for k in want:
            np.testing.assert_array_equal(got[k], want[k])
    other = next(_train(base, **{**kw, "seed": 8}))
    assert not np.array_equal(other["input_fields"], expected[0]["input_fields"])


def test_orbax_checkpoint_round_trip(base, tmp_path):
    import orbax.checkpoint as ocp
    it = _train(base, batch_size=2)
    next(it)
    with ocp.CheckpointManager(str(tmp_path / "ckpt")) as mngr:
        mngr.save(1, args=ocp.args.Composite(data=pipeline.iterator_checkpoint_args(it)))
        mngr.wait_until_finished()
        want = next(it)
        it2 = _train(base, batch_size=2)
        mngr.restore(1, args=ocp.args.Composite(data=pipeline.iterator_restore_args(it2)))
    np.testing.assert_array_equal(next(it2)["input_fields"], want["input_fields"])


def test_mixing_alternates_whole_batches(base):
    it = _train(base, ["toy", "toy2"], batch_size=2, n_steps_input=1, n_steps_output=1)
    ids_toy = FieldVocab().ids(TOY_CHANNELS)
    ids_toy2 = FieldVocab().ids(["energy", "pressure"])
    kinds = []
    for _ in range(6):
        b = next(it)
        c = b["input_fields"].shape[-1]
        assert b["field_ids"].shape == (c,) and b["output_fields"].shape[-1] == c
        if c == 7:
            np.testing.assert_array_equal(b["field_ids"], ids_toy)
            assert b["input_fields"].shape[1:4] == (1, NX, NY)
            kinds.append("toy")
        else:
            np.testing.assert_array_equal(b["field_ids"], ids_toy2)
            assert b["input_fields"].shape[1:4] == (1, 4, 4) and "constant_fields" not in b
            np.testing.assert_array_equal(b["boundary"], [[2, 2], [2, 2]])
            kinds.append("toy2")
    assert kinds == ["toy", "toy2"] * 3
    weighted = _train(base, ["toy", "toy2"], batch_size=2, n_steps_input=1, n_steps_output=1, weights=[3, 1])
    counts = [next(weighted)["input_fields"].shape[-1] for _ in range(8)]
    assert counts.count(7) == 6 and counts.count(2) == 2
    with pytest.raises(ValueError, match="data.log_fields"):
        _train(base, ["toy", "toy2"], log_fields=("temperature",))
    # a log field present in only one dataset of the mix is fine
    b = next(_train(base, ["toy", "toy2"], batch_size=2, log_fields=("pressure",)))
    assert np.isfinite(b["input_fields"]).all()


def test_shard_too_small_is_an_error(base):
    with pytest.raises(ValueError, match="batch_size"):
        _train(base, "single", n_steps_input=1, n_steps_output=1, batch_size=2)


def test_worker_processes_give_the_same_batches(base):
    kw = dict(batch_size=2, seed=5, max_dt=2)
    want = [next(it) for it in [_train(base, **kw)] for _ in range(3)]
    it = _train(base, num_workers=1, **kw)
    got = [next(it) for _ in range(3)]
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g["input_fields"], w["input_fields"])
        np.testing.assert_array_equal(g["field_ids"], w["field_ids"])
