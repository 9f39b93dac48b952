"""Compatibility check: files written by tokpre.data.well load through The Well's own reader with the same values.

Needs the ``the_well`` package (and torch), which tokpre does not depend on, so pytest skips it when absent, and its
name is outside the ``*_test.py`` pattern so a plain ``pytest`` run does not collect it. Run it in an environment
with the_well installed, with tokpre importable:

    python -m venv /tmp/wellvenv && /tmp/wellvenv/bin/pip install torch the_well pytest
    PYTHONPATH=. /tmp/wellvenv/bin/python -m pytest -q tests/data/well_compat_check.py
"""

from __future__ import annotations

import numpy as np
import pytest

the_well_data = pytest.importorskip("the_well.data")
normalization = pytest.importorskip("the_well.data.normalization")

from tokpre.data import well  # noqa: E402

N_IN, N_OUT = 2, 1


def _write_dataset(root, name, spatial_dims, res, *, n_files=2, T=5, B=2, seed=0):
    """Writes ``<root>/<name>/data/train/*.hdf5`` with t0, t1, t2, a constant field and params; returns stats."""
    rng = np.random.default_rng(seed)
    D = len(spatial_dims)
    bc_cycle = ["PERIODIC", "WALL", "OPEN"]
    for i in range(n_files):
        def r(*shape, scale=1.0, loc=0.0):
            return (loc + scale * rng.standard_normal(shape)).astype(np.float32)

        well.write_well_file(
            root / name / "data" / "train" / f"{name}_p{i}.hdf5",
            dataset_name=name, spatial_dims=spatial_dims,
            coords={d: np.linspace(0.0, 1.0, n) for d, n in zip(spatial_dims, res)},
            time=np.arange(T + i) * 0.5,
            t0_fields={"pressure": r(B, T + i, *res, loc=2.0), "tracer": r(B, T + i, *res, scale=0.1)},
            t1_fields={"velocity": r(B, T + i, *res, D, scale=3.0)},
            t2_fields={"D": r(B, T + i, *res, D, D)},
            constant_t0_fields={"speed_of_sound": r(B, *res, loc=1.5)},
            boundary_conditions={d: bc_cycle[j % 3] for j, d in enumerate(spatial_dims)},
            params={"alpha": 0.5 + i, "beta": -1.0},
        )
    return well.write_stats(root / name)


def _compare(ds, split: well.WellSplit) -> None:
    assert len(ds) == split.num_windows(N_IN, N_OUT, 1)
    md = ds.metadata
    assert [c for i in range(3) for c in md.field_names[i]] == list(split.field_names)
    assert [c for i in range(3) for c in md.constant_field_names[i]] == list(split.constant_field_names)
    assert tuple(md.spatial_resolution) == split.resolution
    assert list(md.constant_scalar_names) == list(split.constant_scalar_names)
    mean, std = split.channel_stats()
    std = np.maximum(std, 1e-4)  # The Well clips std at min 1e-4
    cmean, cstd = split.constant_channel_stats()
    cstd = np.maximum(cstd, 1e-4)
    for index in range(len(ds)):
        item = {k: v.numpy() for k, v in ds[index].items()}
        fi, traj, t0 = split.locate(index, N_IN, N_OUT, 1)
        mine = split.read_window(fi, traj, t0, N_IN, N_OUT, 1)
        np.testing.assert_allclose(item["input_fields"], (mine["input_fields"] - mean) / std, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(item["output_fields"], (mine["output_fields"] - mean) / std, rtol=1e-5,
                                   atol=1e-5)
        np.testing.assert_allclose(item["constant_fields"], (mine["constant_fields"] - cmean) / cstd, rtol=1e-5,
                                   atol=1e-5)
        np.testing.assert_allclose(item["constant_scalars"], mine["constant_scalars"], rtol=1e-6)
        np.testing.assert_array_equal(item["boundary_conditions"].astype(np.int32), mine["boundary"])
        assert item["space_grid"].shape == (*split.resolution, split.n_spatial_dims)


@pytest.mark.parametrize("name,spatial_dims,res", [
    ("shear_flow", ("x", "y"), (4, 6)),  # The Well only accepts its own names with well_base_path
    ("MHD_64", ("x", "y", "z"), (3, 4, 2)),
])
def test_the_well_reader_matches(tmp_path, name, spatial_dims, res):
    _write_dataset(tmp_path, name, spatial_dims, res)
    for f in sorted((tmp_path / name / "data" / "train").glob("*.hdf5")):
        well.validate_file(f)
    ds = the_well_data.WellDataset(
        well_base_path=str(tmp_path), well_dataset_name=name, well_split_name="train",
        n_steps_input=N_IN, n_steps_output=N_OUT, use_normalization=True,
        normalization_type=normalization.ZScoreNormalization)
    split = well.WellSplit(tmp_path, name, "train")
    assert split.stats is not None
    _compare(ds, split)


def test_the_well_reader_path_mode_any_name(tmp_path):
    """``path=`` mode accepts any dataset name (unknown field names included)."""
    _write_dataset(tmp_path, "tokpre_toy", ("x", "y"), (5, 3), n_files=1)
    ds = the_well_data.WellDataset(
        path=str(tmp_path / "tokpre_toy"), well_split_name="train", n_steps_input=N_IN, n_steps_output=N_OUT,
        use_normalization=True, normalization_type=normalization.ZScoreNormalization)
    _compare(ds, well.WellSplit(tmp_path, "tokpre_toy", "train"))


if __name__ == "__main__":
    raise SystemExit(pytest.main(["-q", __file__]))
