"""Embedded physical systems that write Well-format datasets (one module per system) and their registry.

``SYSTEMS[name]`` is a :class:`System` whose ``generate(out_dataset_dir, *, resolution, n_trajectories, n_steps,
dt_save, seed, splits=(0.8, 0.1, 0.1), log=print)`` writes ``<dir>/data/{train,valid,test}/<name>_<params>.hdf5``
(distinct trajectories per split) and ``<dir>/stats.yaml``; ``defaults`` are the CLI defaults
(64^2, sized to generate in well under two minutes on 2 CPU cores).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

from tokpre.data.systems import euler, gray_scott, shear_flow


@dataclasses.dataclass(frozen=True)
class System:
    """A registered generator: Well dataset name, generate function, default keyword arguments."""

    name: str
    generate: Callable[..., Any]
    defaults: dict
    description: str


SYSTEMS: dict[str, System] = {
    s.name: s
    for s in (
        System(euler.NAME_PERIODIC, euler.generate_periodic, dict(euler.DEFAULTS),
               "2D compressible Euler, 4-quadrant Riemann problems, periodic (MUSCL-Hancock + HLLC)"),
        System(euler.NAME_OPEN, euler.generate_open, dict(euler.DEFAULTS),
               "2D compressible Euler, 4-quadrant Riemann problems, open/outflow (MUSCL-Hancock + HLLC)"),
        System(shear_flow.NAME, shear_flow.generate, dict(shear_flow.DEFAULTS),
               "2D incompressible periodic shear layers with passive tracer (pseudo-spectral ETDRK2)"),
        System(gray_scott.NAME, gray_scott.generate, dict(gray_scott.DEFAULTS),
               "2D Gray-Scott reaction-diffusion, 6 (F, k) patterns (exponax ETDRK2)"),
    )
}


def get_system(name: str) -> System:
    """The registered system called ``name`` (a Well dataset name); ValueError listing the known names."""
    if name not in SYSTEMS:
        raise ValueError(f"unknown dataset {name!r}; known: {sorted(SYSTEMS)}")
    return SYSTEMS[name]
