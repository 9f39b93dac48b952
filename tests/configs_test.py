"""Config files: variants build, bad variants are named, and the `paper` sizes stated in the docstring hold."""

from __future__ import annotations

import importlib.util
import pathlib

import jax
import pytest

from tokpre.train import cost

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"


def load(name):
    spec = importlib.util.spec_from_file_location(name, CONFIGS / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("name", ["ae_then_dyn", "ae"])
def test_variants_build_and_bad_variant_is_named(name):
    mod = load(name)
    assert mod.get_config("").stages
    assert mod.get_config("paper").data.generate_missing is False
    with pytest.raises(ValueError, match="unknown variant 'huge'"):
        mod.get_config("huge")


def test_paper_variant_builds_abstractly_through_both_stages():
    mod = load("ae_then_dyn")
    cfg = mod.get_config("paper")
    doc = mod.__doc__
    counts = {}
    for stage in ("ae", "dyn"):
        fn, state, batch = cost.abstract_step(cfg, stage, (512, 512), 5)
        new_state, metrics = jax.eval_shape(fn, state, batch)      # nothing allocated
        assert jax.tree.structure(new_state) == jax.tree.structure(state)
        assert metrics["loss"].shape == ()
        counts[stage] = {k: cost.param_count(v) for k, v in state.params.items()}
    assert set(counts["dyn"]) == {"tokeniser", "processor"}
    assert counts["dyn"]["tokeniser"] == sum(counts["ae"].values())
    for n in (counts["dyn"]["tokeniser"], counts["ae"]["encoder"], counts["ae"]["decoder"],
              counts["dyn"]["processor"]):
        assert f"{n:,}" in doc, f"parameter count {n:,} is not stated in configs/ae_then_dyn.py's docstring"
