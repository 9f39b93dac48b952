"""Tests for tokpre.data.well: The Well HDF5 reader / writer / validator / stats (tiny shapes, tmp_path)."""

from __future__ import annotations

import multiprocessing as mp
import os
import pickle

import h5py
import numpy as np
import pytest
import yaml

from tokpre.data import well
from tokpre.data.well import OPEN, PERIODIC, WALL, WellFormatError, WellSplit

RNG = np.random.default_rng(0)


def _rand(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def _write_2d(path, *, B=2, T=6, nx=4, ny=5, name="toy2d", bcs=None, t0=None, t1=None, t2=None, const=None,
              params=None):
    """A 2-D file with t0 (pressure, tracer), t1 (velocity), t2 (D), a constant field and two params."""
    t0 = {"pressure": _rand(B, T, nx, ny), "tracer": _rand(B, T, nx, ny)} if t0 is None else t0
    t1 = {"velocity": _rand(B, T, nx, ny, 2)} if t1 is None else t1
    t2 = {"D": _rand(B, T, nx, ny, 2, 2)} if t2 is None else t2
    const = {"density": _rand(B, nx, ny)} if const is None else const
    params = {"Reynolds": 100.0, "Schmidt": 2.0} if params is None else params
    well.write_well_file(
        path, dataset_name=name, spatial_dims=("x", "y"),
        coords={"x": np.linspace(0, 1, nx), "y": np.linspace(0, 2, ny)}, time=np.arange(T) * 0.1,
        t0_fields=t0, t1_fields=t1, t2_fields=t2, constant_t0_fields=const,
        boundary_conditions={"x": "PERIODIC", "y": "WALL"} if bcs is None else bcs, params=params)
    return dict(t0=t0, t1=t1, t2=t2, const=const, params=params)


def _split_dir(tmp_path, name="toy2d", split="train"):
    d = tmp_path / name / "data" / split
    d.mkdir(parents=True, exist_ok=True)
    return d


def _expected_channels(data, b, tsel):
    """Direct numpy flattening: (T', nx, ny, C) in Well channel order."""
    chans = [v[b, tsel][..., None] for v in data["t0"].values()]
    chans += [v[b, tsel] for v in data["t1"].values()]
    chans += [v[b, tsel].reshape(v[b, tsel].shape[:-2] + (-1,)) for v in data["t2"].values()]
    return np.concatenate(chans, axis=-1)


# ------------------------------------------------------------------------------------------------ round trip


def test_round_trip_2d(tmp_path):
    d = _split_dir(tmp_path)
    data = _write_2d(d / "a.hdf5")
    split = WellSplit(tmp_path, "toy2d", "train")
    assert split.field_names == ("pressure", "tracer", "velocity_x", "velocity_y", "D_xx", "D_xy", "D_yx", "D_yy")
    assert split.constant_field_names == ("density",)
    assert split.resolution == (4, 5) and split.spatial_dims == ("x", "y") and split.n_spatial_dims == 2
    assert split.dataset_name == "toy2d" and split.stats is None
    np.testing.assert_array_equal(split.boundary, [[PERIODIC, PERIODIC], [WALL, WALL]])
    assert split.periodic == (True, False)
    meta = split.files[0]
    assert meta.params == {"Reynolds": 100.0, "Schmidt": 2.0}
    assert meta.constant_scalar_names == ("Reynolds", "Schmidt") and meta.scalar_names == ()
    assert meta.n_trajectories == 2 and meta.n_steps == 6

    w = split.read_window(0, 1, 2, n_in=2, n_out=1, dt=1)
    assert w["input_fields"].shape == (2, 4, 5, 8) and w["input_fields"].dtype == np.float32
    assert w["output_fields"].shape == (1, 4, 5, 8)
    full = _expected_channels(data, 1, slice(2, 5))
    np.testing.assert_array_equal(w["input_fields"], full[:2])
    np.testing.assert_array_equal(w["output_fields"], full[2:])
    np.testing.assert_array_equal(w["constant_fields"], data["const"]["density"][1][..., None])
    np.testing.assert_array_equal(w["constant_scalars"], np.array([100.0, 2.0], np.float32))
    assert w["boundary"].dtype == np.int32 and w["boundary"].shape == (2, 2)
    assert "input_scalars" not in w


def test_round_trip_3d(tmp_path):
    d = _split_dir(tmp_path, "toy3d")
    B, T, n = 1, 4, (3, 4, 2)
    rho, vel, sig = _rand(B, T, *n), _rand(B, T, *n, 3), _rand(B, T, *n, 3, 3)
    const = _rand(B, *n)
    well.write_well_file(
        d / "a.h5", dataset_name="toy3d", spatial_dims=("x", "y", "z"),
        coords={k: np.arange(s, dtype=np.float32) for k, s in zip("xyz", n)}, time=np.arange(T),
        t0_fields={"density": rho}, t1_fields={"velocity": vel}, t2_fields={"sigma": sig},
        constant_t0_fields={"mask": const},
        boundary_conditions={"x": "PERIODIC", "y": "PERIODIC", "z": "WALL"}, params={"At": 0.25})
    split = WellSplit(tmp_path, "toy3d", "train")
    assert split.field_names[:4] == ("density", "velocity_x", "velocity_y", "velocity_z")
    assert split.field_names[4:] == tuple(f"sigma_{a}{b}" for a in "xyz" for b in "xyz")
    assert split.periodic == (True, True, False)
    np.testing.assert_array_equal(split.boundary, [[2, 2], [2, 2], [0, 0]])
    traj = split.read_trajectory(0, 0)
    assert traj.shape == (T, *n, 13)
    np.testing.assert_array_equal(traj[..., 0], rho[0])
    np.testing.assert_array_equal(traj[..., 1:4], vel[0])
    np.testing.assert_array_equal(traj[..., 4:], sig[0].reshape(T, *n, 9))
    np.testing.assert_array_equal(traj[..., 4 + 3 * 1 + 2], sig[0, ..., 1, 2])  # sigma_yz
    np.testing.assert_array_equal(split.read_window(0, 0, 0, 1, 0)["constant_fields"][..., 0], const[0])
    assert split.read_window(0, 0, 0, 1, 0)["constant_scalars"].tolist() == [0.25]


def test_writer_schema_and_full_validation(tmp_path):
    p = tmp_path / "f.hdf5"
    _write_2d(p, B=1, T=3, nx=4, ny=3)
    meta = well.validate_file(p)
    assert meta.dataset_name == "toy2d" and meta.grid_type == "cartesian"
    with h5py.File(p, "r") as f:
        assert f.attrs["n_spatial_dims"] == 2 and f.attrs["n_trajectories"] == 1
        assert list(f.attrs["simulation_parameters"]) == ["Reynolds", "Schmidt"]
        assert f.attrs["Reynolds"] == 100.0
        assert f["scalars/Reynolds"].shape == () and f["scalars/Reynolds"].dtype == np.float32
        assert list(f["scalars"].attrs["field_names"]) == ["Reynolds", "Schmidt"]
        assert list(f["dimensions"].attrs["spatial_dims"]) == ["x", "y"]
        t = f["dimensions/time"]
        assert t.shape == (3,) and t.dtype == np.float32
        assert not t.attrs["sample_varying"] and t.attrs["time_varying"]
        for k in ("x", "y"):
            assert not f["dimensions"][k].attrs["sample_varying"] and not f["dimensions"][k].attrs["time_varying"]
        assert list(f["t0_fields"].attrs["field_names"]) == ["pressure", "tracer", "density"]
        assert f["t0_fields/density"].attrs["time_varying"] == False  # noqa: E712
        v = f["t1_fields/velocity"]
        assert v.dtype == np.float32 and v.shape == (1, 3, 4, 3, 2)
        assert v.attrs["dim_varying"].tolist() == [True, True]
        assert f["t2_fields/D"].attrs["symmetric"] == False  # noqa: E712
        assert f["t2_fields/D"].attrs["antisymmetric"] == False  # noqa: E712
        bc = f["boundary_conditions/y_wall"]
        assert bc.attrs["bc_type"] == "WALL"
        assert list(bc.attrs["associated_dims"]) == ["y"] and len(bc.attrs["associated_fields"]) == 0
        assert bc["mask"].dtype == bool and bc["mask"][()].tolist() == [True, False, True]
        assert "x_periodic" in f["boundary_conditions"]
    assert not [n for n in os.listdir(tmp_path) if "tmp" in n]  # atomic write left no temp file


def test_writer_rejects_bad_shapes(tmp_path):
    with pytest.raises(ValueError, match=r"t1_fields\['velocity'\].*\(1, 3, 4, 3, 2\)"):
        _write_2d(tmp_path / "bad.hdf5", B=1, T=3, nx=4, ny=3, t1={"velocity": _rand(1, 3, 4, 3)})
    assert not (tmp_path / "bad.hdf5").exists()


def test_empty_groups_and_unknown_field_names(tmp_path):
    d = _split_dir(tmp_path, "weird")
    x = _rand(1, 3, 4, 4)
    well.write_well_file(d / "a.hdf5", dataset_name="weird", spatial_dims=("x", "y"),
                         coords={"x": np.arange(4.0), "y": np.arange(4.0)}, time=np.arange(3.0),
                         t0_fields={"zz_never_seen_quantity": x}, boundary_conditions={})
    split = WellSplit(tmp_path, "weird", "train")
    assert split.field_names == ("zz_never_seen_quantity",)
    np.testing.assert_array_equal(split.read_trajectory(0, 0)[..., 0], x[0])
    np.testing.assert_array_equal(split.boundary, [[OPEN, OPEN], [OPEN, OPEN]])  # default OPEN
    w = split.read_window(0, 0, 0, 2, 1)
    assert set(w) == {"input_fields", "output_fields", "boundary"}


def test_bytes_attributes_decode(tmp_path):
    """Files whose string attributes are bytes / fixed-length byte arrays (older h5py writers) load the same."""
    d = _split_dir(tmp_path)
    data = _write_2d(d / "a.hdf5", B=1, T=3)
    with h5py.File(d / "a.hdf5", "r+") as f:
        f.attrs["dataset_name"] = np.bytes_(b"toy2d")
        f.attrs["simulation_parameters"] = np.array([b"Reynolds", b"Schmidt", b"ic"], dtype="S8")
        f.attrs["ic"] = np.bytes_(b"gaussian")  # a non-numeric parameter is kept as a string
        f["t1_fields"].attrs["field_names"] = np.array([b"velocity"], dtype="S8")
        f["dimensions"].attrs["spatial_dims"] = np.array([b"x", b"y"], dtype="S1")
        f["boundary_conditions/y_wall"].attrs["bc_type"] = np.bytes_(b"wall")  # lower case too
        f["boundary_conditions/y_wall"].attrs["associated_dims"] = np.bytes_(b"y")  # plain string, as dummy_data
    split = WellSplit(tmp_path, "toy2d", "train")
    assert split.files[0].params == {"Reynolds": 100.0, "Schmidt": 2.0, "ic": "gaussian"}
    assert split.field_names[2:4] == ("velocity_x", "velocity_y")
    np.testing.assert_array_equal(split.boundary, [[PERIODIC, PERIODIC], [WALL, WALL]])
    np.testing.assert_array_equal(split.read_trajectory(0, 0), _expected_channels(data, 0, slice(0, 3)))


# ------------------------------------------------------------------------------------------------ boundaries


def _add_bc(path, name, bc_type, dims, mask):
    with h5py.File(path, "r+") as f:
        g = f["boundary_conditions"].create_group(name)
        g.attrs["bc_type"] = bc_type
        g.attrs["associated_dims"] = np.array(dims, dtype=h5py.string_dtype())
        g.attrs["associated_fields"] = np.array([], dtype=h5py.string_dtype())
        g.attrs["sample_varying"] = False
        g.attrs["time_varying"] = False
        g.create_dataset("mask", data=np.asarray(mask, dtype=bool))


@pytest.mark.parametrize("bcs,want", [
    ({"x": "PERIODIC", "y": "PERIODIC"}, [[2, 2], [2, 2]]),
    ({"x": "OPEN", "y": "WALL"}, [[1, 1], [0, 0]]),
    ({"x": "WALL"}, [[0, 0], [1, 1]]),  # y unspecified -> OPEN
    ({"x": "periodic", "y": "open"}, [[2, 2], [1, 1]]),
])
def test_boundary_codes_simple(tmp_path, bcs, want):
    p = tmp_path / "f.hdf5"
    _write_2d(p, B=1, T=2, bcs=bcs)
    np.testing.assert_array_equal(well.read_file_metadata(p).boundary, want)


def test_boundary_codes_partial_masks(tmp_path):
    """Acoustic-style one-sided groups and 2-D masks: WALL needs the whole edge (min), OPEN any point (max)."""
    p = tmp_path / "f.hdf5"
    _write_2d(p, B=1, T=2, nx=4, ny=5, bcs={})
    _add_bc(p, "x0_wall", "WALL", ["x"], [1, 0, 0, 0])  # low x side only
    _add_bc(p, "xL_open", "OPEN", ["x"], [0, 0, 0, 1])  # high x side only
    m_wall = np.zeros((4, 5), bool)
    m_wall[:, 0] = True  # full low-y edge
    m_wall[:2, -1] = True  # partial high-y edge: not WALL
    _add_bc(p, "xy_wall", "WALL", ["x", "y"], m_wall)
    b = well.read_file_metadata(p).boundary
    # x: low WALL (x0_wall), high OPEN; xy_wall on x: low edge mask[0,:] not all True, high mask[-1,:] not all True
    np.testing.assert_array_equal(b, [[WALL, OPEN], [WALL, OPEN]])
    m_open = np.zeros((4, 5), bool)
    m_open[1, -1] = True  # one point on the high-y edge is enough for OPEN/PERIODIC
    _add_bc(p, "zz_periodic", "PERIODIC", ["x", "y"], m_open)  # iterated last (HDF5 key order) -> overrides
    b = well.read_file_metadata(p).boundary
    np.testing.assert_array_equal(b, [[WALL, OPEN], [WALL, PERIODIC]])


# ------------------------------------------------------------------------------------------------ windows


def test_window_count_order_and_content(tmp_path):
    d = _split_dir(tmp_path)
    a = _write_2d(d / "a.hdf5", B=2, T=7, nx=2, ny=3)
    b = _write_2d(d / "b.hdf5", B=3, T=5, nx=2, ny=3)
    split = WellSplit(tmp_path, "toy2d", "train")
    # Well formula: n_traj * max(0, T - dt*(n_in+n_out-1))
    assert split.num_windows(2, 1, 1) == 2 * 5 + 3 * 3
    assert split.num_windows(2, 1, 2) == 2 * 3 + 3 * 1
    assert split.num_windows(4, 0, 1) == 2 * 4 + 3 * 2  # autoencoder windows
    assert split.num_windows(3, 2, 2) == 0  # T - 8 <= 0 for both files
    assert split.num_windows(1, 0, 1) == 2 * 7 + 3 * 5
    order = [split.locate(i, 2, 1, 2) for i in range(split.num_windows(2, 1, 2))]
    assert order == [(0, 0, 0), (0, 0, 1), (0, 0, 2), (0, 1, 0), (0, 1, 1), (0, 1, 2),
                     (1, 0, 0), (1, 1, 0), (1, 2, 0)]
    with pytest.raises(IndexError):
        split.locate(9, 2, 1, 2)
    assert split.trajectories() == [(0, 0, 7), (0, 1, 7), (1, 0, 5), (1, 1, 5), (1, 2, 5)]

    fi, tr, t0 = split.locate(4, 2, 1, 2)
    w = split.read_window(fi, tr, t0, 2, 1, 2)
    full = _expected_channels(a, 1, slice(1, 1 + 3 * 2, 2))
    np.testing.assert_array_equal(w["input_fields"], full[:2])
    np.testing.assert_array_equal(w["output_fields"], full[2:])
    w0 = split.read_window(1, 2, 1, 4, 0)
    assert "output_fields" not in w0 and w0["input_fields"].shape == (4, 2, 3, 8)
    np.testing.assert_array_equal(w0["input_fields"], _expected_channels(b, 2, slice(1, 5)))
    with pytest.raises(IndexError, match="exceeds"):
        split.read_window(1, 0, 2, 2, 2)
    with pytest.raises(ValueError, match="n_in"):
        split.num_windows(0, 1, 1)


def test_dim_varying_false_is_tiled(tmp_path):
    """A field constant along y, stored compactly (no y axis) or with a size-1 axis, is tiled to full size."""
    d = _split_dir(tmp_path)
    _write_2d(d / "a.hdf5", B=1, T=3, nx=4, ny=5, t2={}, const={})
    prof_compact = _rand(1, 3, 4)
    prof_full = _rand(1, 3, 4, 1, 2)
    with h5py.File(d / "a.hdf5", "r+") as f:
        del f["t0_fields/tracer"]
        ds = f["t0_fields"].create_dataset("tracer", data=prof_compact)
        ds.attrs.update(sample_varying=True, time_varying=True, dim_varying=np.array([True, False]))
        del f["t1_fields/velocity"]
        ds = f["t1_fields"].create_dataset("velocity", data=prof_full)
        ds.attrs.update(sample_varying=True, time_varying=True, dim_varying=np.array([True, False]))
    split = WellSplit(tmp_path, "toy2d", "train")
    traj = split.read_trajectory(0, 0)
    assert traj.shape == (3, 4, 5, 4)
    np.testing.assert_array_equal(traj[..., 1], np.broadcast_to(prof_compact[0][..., None], (3, 4, 5)))
    np.testing.assert_array_equal(traj[..., 2:], np.broadcast_to(prof_full[0], (3, 4, 5, 2)))


def _read_in_child(split, q):
    q.put(split.read_window(0, 0, 1, 1, 1)["input_fields"].sum())


def test_handles_cached_pickled_and_reopened_after_fork(tmp_path):
    d = _split_dir(tmp_path)
    _write_2d(d / "a.hdf5", B=1, T=3)
    split = WellSplit(tmp_path, "toy2d", "train")
    ref = split.read_window(0, 0, 1, 1, 1)["input_fields"]
    h = split._file(0)
    assert split._file(0) is h  # cached in this process
    clone = pickle.loads(pickle.dumps(split))
    np.testing.assert_array_equal(clone.read_window(0, 0, 1, 1, 1)["input_fields"], ref)
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=_read_in_child, args=(split, q))
    p.start()
    got = q.get(timeout=60)
    p.join(timeout=60)
    assert p.exitcode == 0 and np.isclose(got, ref.sum())
    split.close()


# ------------------------------------------------------------------------------------------------ stats


def test_stats_match_numpy(tmp_path):
    ds_dir = tmp_path / "toy2d"
    d = _split_dir(tmp_path)
    a = _write_2d(d / "a.hdf5", B=2, T=4, nx=3, ny=2)
    b = _write_2d(d / "b.hdf5", B=1, T=6, nx=3, ny=2)
    for arr in (a, b):  # offsets so mean / std / rms differ
        arr["t1"]["velocity"][..., 0] += 3.0
    _write_2d(d / "a.hdf5", **{k: a[k] for k in ("t0", "t1", "t2", "const", "params")}, B=2, T=4, nx=3, ny=2)
    _write_2d(d / "b.hdf5", **{k: b[k] for k in ("t0", "t1", "t2", "const", "params")}, B=1, T=6, nx=3, ny=2)
    stats = well.write_stats(ds_dir)
    assert set(stats) == set(well.STATS_KEYS)

    def pooled(key_group, name, order, delta=False):
        xs = []
        for arr in (a, b):
            x = arr[key_group][name].astype(np.float64)
            if delta:
                x = x[:, 1:] - x[:, :-1]
            xs.append(x.reshape((-1,) + x.shape[x.ndim - order:] if order else (-1,)))
        x = np.concatenate(xs)
        return x.mean(0), x.std(0), np.sqrt((x * x).mean(0))

    for group, name, order in (("t0", "pressure", 0), ("t1", "velocity", 1), ("t2", "D", 2)):
        m, s, r = pooled(group, name, order)
        np.testing.assert_allclose(stats["mean"][name], m, rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(stats["std"][name], s, rtol=1e-6)
        np.testing.assert_allclose(stats["rms"][name], r, rtol=1e-6)
        md, sd, rd = pooled(group, name, order, delta=True)
        np.testing.assert_allclose(stats["mean_delta"][name], md, rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(stats["std_delta"][name], sd, rtol=1e-6)
        np.testing.assert_allclose(stats["rms_delta"][name], rd, rtol=1e-6)
    m, s, _ = pooled("const", "density", 0)
    np.testing.assert_allclose([stats["mean"]["density"], stats["std"]["density"]], [m, s], rtol=1e-6, atol=1e-9)
    assert "density" not in stats["mean_delta"] and "density" not in stats["std_delta"]
    assert np.shape(stats["std"]["velocity"]) == (2,) and np.shape(stats["std"]["D"]) == (2, 2)

    text = (ds_dir / "stats.yaml").read_text()
    assert "E-" in text or "E+" in text
    raw = yaml.safe_load(text)
    assert isinstance(raw["std"]["pressure"], float) and isinstance(raw["mean"]["velocity"][0], float)
    loaded = well.load_stats(ds_dir / "stats.yaml")
    np.testing.assert_allclose(loaded["std"]["D"], stats["std"]["D"], rtol=1e-4)  # %.4E rounding

    split = WellSplit(tmp_path, "toy2d", "train")
    assert split.stats is not None
    mean, std = split.channel_stats()
    assert mean.shape == std.shape == (8,) and mean.dtype == np.float32
    np.testing.assert_allclose(std[2], loaded["std"]["velocity"][0])  # velocity_x
    np.testing.assert_allclose(mean[3], loaded["mean"]["velocity"][1])  # velocity_y
    np.testing.assert_allclose(std[5], loaded["std"]["D"][0][1])  # D_xy
    np.testing.assert_allclose(std[6], loaded["std"]["D"][1][0])  # D_yx
    np.testing.assert_allclose(mean[0], loaded["mean"]["pressure"])
    cm, cs = split.constant_channel_stats()
    np.testing.assert_allclose([cm[0], cs[0]], [loaded["mean"]["density"], loaded["std"]["density"]])
    dm, dsd = well.channel_stats(loaded, ["velocity_y"], ("x", "y"), delta=True)
    np.testing.assert_allclose(dsd[0], loaded["std_delta"]["velocity"][1])
    with pytest.raises(WellFormatError, match="channel 'nope_x'"):
        well.channel_stats(loaded, ["nope_x"], ("x", "y"))


# ------------------------------------------------------------------------------------------------ errors


@pytest.fixture
def good(tmp_path):
    d = _split_dir(tmp_path)
    p = d / "good.hdf5"
    _write_2d(p, B=1, T=3, nx=4, ny=3)
    return p


def _err(path) -> str:
    with pytest.raises(WellFormatError) as e:
        well.read_file_metadata(path)
    return str(e.value)


def test_error_missing_group(good):
    with h5py.File(good, "r+") as f:
        del f["t2_fields"]
    msg = _err(good)
    assert str(good) in msg and "/t2_fields" in msg and "expected an HDF5 group" in msg and "missing" in msg


def test_error_missing_attribute(good):
    with h5py.File(good, "r+") as f:
        del f["t1_fields/velocity"].attrs["time_varying"]
    msg = _err(good)
    assert str(good) in msg and "/t1_fields/velocity" in msg and "time_varying" in msg
    assert "expected a bool" in msg and "no such attribute" in msg


def test_error_missing_root_attribute(good):
    with h5py.File(good, "r+") as f:
        del f.attrs["Schmidt"]
    msg = _err(good)
    assert str(good) in msg and "/.attrs['Schmidt']" in msg and "expected a simulation parameter value" in msg
    assert "no such attribute" in msg


def test_error_wrong_shape(good):
    with h5py.File(good, "r+") as f:
        del f["t1_fields/velocity"]
        ds = f["t1_fields"].create_dataset("velocity", data=_rand(1, 3, 4, 3))
        ds.attrs.update(sample_varying=True, time_varying=True, dim_varying=np.array([True, True]))
    msg = _err(good)
    assert str(good) in msg and "/t1_fields/velocity" in msg
    assert "expected shape (1, 3, 4, 3, 2)" in msg and "found shape (1, 3, 4, 3)" in msg


def test_error_non_float_dtype(good):
    with h5py.File(good, "r+") as f:
        del f["t0_fields/pressure"]
        ds = f["t0_fields"].create_dataset("pressure", data=np.ones((1, 3, 4, 3), np.int32))
        ds.attrs.update(sample_varying=True, time_varying=True, dim_varying=np.array([True, True]))
    msg = _err(good)
    assert str(good) in msg and "/t0_fields/pressure" in msg and "floating-point" in msg and "int32" in msg


def test_error_listed_field_absent(good):
    with h5py.File(good, "r+") as f:
        f["t0_fields"].attrs["field_names"] = np.array(["pressure", "tracer", "density", "ghost"],
                                                       dtype=h5py.string_dtype())
    msg = _err(good)
    assert str(good) in msg and "/t0_fields/ghost" in msg and "field_names" in msg and "missing" in msg


def test_error_bad_bc_type(good):
    with h5py.File(good, "r+") as f:
        f["boundary_conditions/x_periodic"].attrs["bc_type"] = "SLIPPERY"
    msg = _err(good)
    assert "/boundary_conditions/x_periodic" in msg and "bc_type" in msg and "'SLIPPERY'" in msg
    assert "PERIODIC" in msg


def test_error_not_hdf5(tmp_path):
    p = tmp_path / "junk.hdf5"
    p.write_text("not hdf5")
    msg = _err(p)
    assert str(p) in msg and "expected a readable HDF5 file" in msg


@pytest.mark.parametrize("what,kwargs,obj,found", [
    ("resolution", dict(nx=5), "/dimensions", "(5, 3)"),
    ("dataset_name", dict(name="other"), "dataset_name", "'other'"),
])
def test_error_split_mismatch(tmp_path, good, what, kwargs, obj, found):
    bad = good.parent / "zz.hdf5"
    _write_2d(bad, **{"B": 1, "T": 3, "nx": 4, "ny": 3, **kwargs})
    with pytest.raises(WellFormatError) as e:
        WellSplit(tmp_path, "toy2d", "train")
    msg = str(e.value)
    assert str(bad) in msg and obj in msg and what in msg and found in msg and str(good) in msg


def test_error_split_mismatch_ndims(tmp_path, good):
    bad = good.parent / "zz.hdf5"
    well.write_well_file(bad, dataset_name="toy2d", spatial_dims=("x", "y", "z"),
                         coords={"x": np.arange(4.0), "y": np.arange(3.0), "z": np.arange(2.0)}, time=np.arange(3.0),
                         t0_fields={"pressure": _rand(1, 3, 4, 3, 2)}, boundary_conditions={})
    with pytest.raises(WellFormatError) as e:
        WellSplit(tmp_path, "toy2d", "train")
    msg = str(e.value)
    assert str(bad) in msg and "n_spatial_dims" in msg and "expected n_spatial_dims 2" in msg and "found 3" in msg


def test_error_nan_in_window(tmp_path):
    d = _split_dir(tmp_path)
    data = _write_2d(d / "a.hdf5", B=2, T=6, nx=2, ny=2)
    data["t1"]["velocity"][1, 4, 0, 1, 1] = np.nan
    _write_2d(d / "a.hdf5", **{k: data[k] for k in ("t0", "t1", "t2", "const", "params")}, B=2, T=6, nx=2, ny=2)
    split = WellSplit(tmp_path, "toy2d", "train")  # construction reads no field data
    split.read_window(0, 1, 0, 2, 1)  # steps 0..2: clean
    split.read_window(0, 0, 3, 2, 1)  # other trajectory: clean
    with pytest.raises(WellFormatError) as e:
        split.read_window(0, 1, 3, 2, 1)  # steps 3..5 include t=4
    msg = str(e.value)
    assert "a.hdf5" in msg and "/t1_fields/velocity" in msg and "trajectory 1" in msg and "3:6:1" in msg
    assert "expected finite values" in msg and "NaN/Inf" in msg
    with pytest.raises(WellFormatError, match="/t1_fields/velocity"):
        well.validate_file(d / "a.hdf5")
    with pytest.raises(WellFormatError, match="/t1_fields/velocity"):
        split.read_trajectory(0, 1)


def test_validate_requires_params_in_scalars(good):
    with h5py.File(good, "r+") as f:
        del f["scalars/Schmidt"]
        f["scalars"].attrs["field_names"] = np.array(["Reynolds"], dtype=h5py.string_dtype())
    well.read_file_metadata(good)  # the reader itself does not need it
    with pytest.raises(WellFormatError) as e:
        well.validate_file(good)
    msg = str(e.value)
    assert str(good) in msg and "/scalars" in msg and "Schmidt" in msg and "['Reynolds']" in msg


def test_error_missing_split_and_no_files(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        WellSplit(tmp_path, "nosuch", "train")
    msg = str(e.value)
    assert str(tmp_path / "nosuch" / "data" / "train") in msg
    assert "python -m tokpre.data.generate --dataset=" in msg and "the-well-download" in msg
    empty = _split_dir(tmp_path, "empty", "valid")
    with pytest.raises(FileNotFoundError) as e:
        WellSplit.from_dir(empty)
    assert str(empty) in str(e.value) and "no *.hdf5" in str(e.value)
    with pytest.raises(FileNotFoundError, match="the-well-download"):
        well.write_stats(tmp_path / "empty")


def test_from_dir_finds_dataset_stats(tmp_path, good):
    well.write_stats(tmp_path / "toy2d")
    split = WellSplit.from_dir(good.parent)
    assert split.stats is not None and "pressure" in split.stats["mean"]
    assert split.num_windows(1, 1) == 2
