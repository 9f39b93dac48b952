"""Dataset generation end to end: Well-valid files, splits, stats, determinism, atomicity, CLI."""

import os
import subprocess
import sys

import h5py
import numpy as np
import pytest

from tokpre.data import generate, well
from tokpre.data.systems import SYSTEMS, euler

# Tiny per-system overrides: one parameter set, 3 trajectories (one per split), 16^2, 3 saved steps.
TINY = {
    "euler_multi_quadrants_periodicBC": dict(gammas=(1.4,)),
    "euler_multi_quadrants_openBC": dict(gammas=(1.6,)),
    "shear_flow": dict(reynolds=(1e3,), schmidt=(1.0,)),
    # 32^2: at 16^2 the random spots cover the whole domain and every initial state looks the same
    "gray_scott_reaction_diffusion": dict(patterns=(("spots", 0.03, 0.062),), dt_save=10.0, resolution=32),
}
FIELDS = {
    "euler_multi_quadrants_periodicBC": ["energy", "density", "pressure", "momentum_x", "momentum_y"],
    "euler_multi_quadrants_openBC": ["energy", "density", "pressure", "momentum_x", "momentum_y"],
    "shear_flow": ["tracer", "pressure", "velocity_x", "velocity_y"],
    "gray_scott_reaction_diffusion": ["A", "B"],
}
BASE = dict(resolution=16, n_trajectories=3, n_steps=3)
PARAMS = {
    "euler_multi_quadrants_periodicBC": ["gamma"],
    "euler_multi_quadrants_openBC": ["gamma"],
    "shear_flow": ["Reynolds", "Schmidt"],
    "gray_scott_reaction_diffusion": ["F", "k"],
}


def _tiny(tmp_path, name, seed=0, **kw):
    return generate.generate_dataset(tmp_path, name, log=None, **{**BASE, "seed": seed, **TINY[name], **kw})


def test_registry_names_match_the_well():
    assert set(SYSTEMS) == set(TINY)


@pytest.mark.parametrize("name", sorted(TINY))
def test_generate_writes_valid_well_dataset(tmp_path, name):
    d = _tiny(tmp_path, name)
    assert d == tmp_path / name and (d / "stats.yaml").exists()
    assert not list(tmp_path.glob("*.partial-*"))
    code = well.OPEN if name.endswith("openBC") else well.PERIODIC
    first_frames = []
    for split in ("train", "valid", "test"):
        files = sorted((d / "data" / split).glob("*.hdf5"))
        assert len(files) == 1, files
        assert files[0].name.startswith(name + "_")
        meta = well.validate_file(files[0])
        assert meta.dataset_name == name
        assert list(meta.field_names) == FIELDS[name]
        res = TINY[name].get("resolution", 16)
        assert meta.resolution == (res, res) and meta.n_steps == 3 and meta.n_trajectories == 1
        np.testing.assert_array_equal(meta.boundary, np.full((2, 2), code))
        assert sorted(meta.params) == sorted(PARAMS[name])
        with h5py.File(files[0], "r") as f:
            grp = "t0_fields"
            first = f[grp][FIELDS[name][0]][:, 0]
        first_frames.append(first)
    # distinct trajectories in each split
    assert not np.allclose(first_frames[0], first_frames[1])
    assert not np.allclose(first_frames[1], first_frames[2])
    stats = well.load_stats(d / "stats.yaml")
    for key in ("mean", "std", "rms", "mean_delta", "std_delta", "rms_delta"):
        assert key in stats
    core = {f.split("_")[0] if f.startswith(("momentum", "velocity")) else f for f in FIELDS[name]}
    assert set(stats["mean"]) == core


def test_generate_is_deterministic_per_seed(tmp_path):
    name = "euler_multi_quadrants_periodicBC"
    read = lambda d: {k: h5py.File(p, "r")["t0_fields/density"][...]
                      for k, p in ((p.parent.name, p) for p in sorted(d.glob("data/*/*.hdf5")))}
    a = read(_tiny(tmp_path / "a", name, seed=3))
    b = read(_tiny(tmp_path / "b", name, seed=3))
    c = read(_tiny(tmp_path / "c", name, seed=4))
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
        assert not np.array_equal(a[k], c[k])


def test_exception_mid_generation_leaves_no_dataset(tmp_path, monkeypatch):
    name = "euler_multi_quadrants_openBC"
    calls = []
    real = euler.random_quadrants

    def flaky(rng, n, res):  # first parameter set succeeds and is written, the second one fails
        calls.append(n)
        if len(calls) == 2:
            raise RuntimeError("boom")
        return real(rng, n, res)

    monkeypatch.setattr(euler, "random_quadrants", flaky)
    with pytest.raises(RuntimeError, match="boom"):
        _tiny(tmp_path, name, gammas=(1.4, 1.6), n_trajectories=6)
    assert len(calls) == 2
    assert not (tmp_path / name).exists()
    assert list(tmp_path.iterdir()) == []


def test_stale_partial_removed_and_ensure_generates_once(tmp_path, capsys):
    name = "gray_scott_reaction_diffusion"
    stale = tmp_path / f"{name}.partial-999999999"
    (stale / "data" / "train").mkdir(parents=True)
    (stale / "data" / "train" / "junk.hdf5").write_bytes(b"half")
    kw = {**BASE, **TINY[name]}
    d = generate.ensure_dataset(tmp_path, name, **kw)
    assert not stale.exists()
    assert "generating" in capsys.readouterr().out
    stamp = os.path.getmtime(d / "stats.yaml")
    assert generate.ensure_dataset(tmp_path, name, **kw) == d
    assert "generating" not in capsys.readouterr().out
    assert os.path.getmtime(d / "stats.yaml") == stamp
    # --force regenerates in place, atomically replacing the old one
    generate.generate_dataset(tmp_path, name, force=True, log=None, seed=1, **kw)
    assert well.validate_file(next(d.glob("data/train/*.hdf5")))
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]


def test_cli_help_and_unknown_dataset(tmp_path):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, "-m", "tokpre.data.generate", "--help"], capture_output=True, text=True,
                         env=env, timeout=120)
    assert out.returncode == 0
    for flag in ("--dataset", "--base_path", "--resolution", "--n_trajectories", "--n_steps", "--dt_save",
                 "--seed", "--force"):
        assert flag in out.stdout
    rc = generate.main(["--dataset=nope", f"--base_path={tmp_path}"])
    assert rc == 2 and not any(tmp_path.iterdir())
