"""Stage 1 only: pretrain the tokeniser as an autoencoder on embedded Euler data.

    python -m tokpre.main --config=configs/ae.py --workdir=runs/ae

What it runs: the `ae` stage of configs/ae_then_dyn.py (same data, model and optimiser), then prints the test
reconstruction VRMSE for every allowed (t, s). Cost: see configs/ae_then_dyn.py (stage 1 is its larger part).
Variants: `:paper` as in configs/ae_then_dyn.py.
"""

import importlib.util
import pathlib


def get_config(arg: str = ""):
    spec = importlib.util.spec_from_file_location("ae_then_dyn", pathlib.Path(__file__).with_name("ae_then_dyn.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    c = mod.get_config(arg)
    c.stages = ("ae",)
    return c
