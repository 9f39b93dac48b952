"""2D Gray-Scott reaction-diffusion (The Well's ``gray_scott_reaction_diffusion``), periodic.

    A_t = D_A lap A - A B^2 + F (1 - A)
    B_t = D_B lap B + A B^2 - (F + k) B

Solved with exponax's pseudo-spectral ETDRK2 ``GrayScott`` stepper (diffusion treated exactly; reaction
dealiased with the 1/2 rule), D_A = 2e-5, D_B = 1e-5 and inner step 1 s as in The Well. The Well uses the
domain [-1, 1]^2 at 128^2; here the domain is scaled with the resolution so the grid spacing matches
(64^2 -> side 1.0), keeping the patterns resolved. Fields A, B (channel order); parameters F, k.
Initial condition: A = 1, B = 0 plus a random number of smooth Gaussian spots (A -> 1/2, B -> 1/4 at centres);
for "bubbles" (where such spots die out) the B-rich homogeneous state with random holes (A = 1, B = 0).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Callable, Sequence

import exponax
import jax
import jax.numpy as jnp
import numpy as np

from tokpre.data.systems import _common

NAME = "gray_scott_reaction_diffusion"
# (label, F, k) following The Well's file naming, e.g. gray_scott_reaction_diffusion_maze_F_0.029_k_0.057.hdf5
PATTERNS = (
    ("gliders", 0.014, 0.054),
    ("bubbles", 0.098, 0.057),
    ("maze", 0.029, 0.057),
    ("worms", 0.058, 0.065),
    ("spirals", 0.018, 0.051),
    ("spots", 0.03, 0.062),
)
D_A, D_B = 2e-5, 1e-5
DT_INNER = 1.0


def domain_extent(resolution: int) -> float:
    """Side of the square domain: the Well's grid spacing 2/128 times ``resolution``."""
    return resolution * 2.0 / 128.0


@functools.partial(jax.jit, static_argnames=("resolution", "n_steps", "n_sub", "dt", "extent", "d_a", "d_b"))
def solve(u0: jax.Array, F: jax.Array, k: jax.Array, *, resolution: int, n_steps: int, n_sub: int,
          dt: float = DT_INNER, extent: float = 1.0, d_a: float = D_A, d_b: float = D_B) -> jax.Array:
    """Batched rollout. u0: (B, 2, N, N) = (A, B); F, k: (B,). Returns (B, n_steps, 2, N, N), saved every n_sub*dt."""

    def one(u0, F, k):
        stepper = exponax.stepper.reaction.GrayScott(
            2, extent, resolution, dt, diffusivity_1=d_a, diffusivity_2=d_b, feed_rate=F, kill_rate=k)

        def interval(u_hat, _):
            u_hat = jax.lax.fori_loop(0, n_sub, lambda i, h: stepper.step_fourier(h), u_hat)
            return u_hat, exponax.ifft(u_hat, num_spatial_dims=2, num_points=resolution)

        _, us = jax.lax.scan(interval, exponax.fft(u0, num_spatial_dims=2), None, length=n_steps - 1)
        return jnp.concatenate([u0[None], us], axis=0)

    return jax.vmap(one)(u0, F, k)


def upper_state(F: float, k: float) -> tuple[float, float] | None:
    """The B-rich homogeneous steady state (A, B) of Gray-Scott, or None when F < 4 (F + k)^2."""
    disc = F * F - 4 * F * (F + k) ** 2
    if disc < 0:
        return None
    B = (F + np.sqrt(disc)) / (2 * (F + k))
    return (F + k) / B, B


def random_spots(rng: np.random.Generator, n: int, resolution: int,
                 background: tuple[float, float] = (1.0, 0.0), spot: tuple[float, float] = (0.5, 0.25)) -> np.ndarray:
    """Initial states (n, 2, N, N): background (A, B) with 3..12 smooth spots of value ``spot`` (default A = 1/2,
    B = 1/4 on the trivial state A = 1, B = 0; bubbles use holes A = 1, B = 0 in the B-rich state).

    Spot centres uniform on the periodic domain, widths 2..5 grid cells, flat-topped (periodic distance).
    """
    g = np.arange(resolution)
    out = np.empty((n, 2, resolution, resolution), np.float32)
    for b in range(n):
        s = np.zeros((resolution, resolution))
        for _ in range(rng.integers(3, 13)):
            cx, cy = rng.uniform(0, resolution, 2)
            w = rng.uniform(2.0, 5.0)
            dx = (g - cx + resolution / 2) % resolution - resolution / 2
            dy = (g - cy + resolution / 2) % resolution - resolution / 2
            s += np.exp(-(dx[:, None] ** 2 + dy[None, :] ** 2) / (2 * w * w))
        s = np.clip(1.5 * s, 0, 1)
        out[b, 0] = background[0] + s * (spot[0] - background[0])
        out[b, 1] = background[1] + s * (spot[1] - background[1])
    return out


DEFAULTS = dict(resolution=64, n_trajectories=48, n_steps=81, dt_save=40.0, seed=0)


def generate(
    out_dataset_dir: str | Path,
    *,
    resolution: int = 64,
    n_trajectories: int = 48,
    n_steps: int = 81,
    dt_save: float = 40.0,
    seed: int = 0,
    splits: Sequence[float] = (0.8, 0.1, 0.1),
    patterns: Sequence[tuple[str, float, float]] = PATTERNS,
    log: Callable[[str], None] | None = print,
) -> Path:
    """Write ``gray_scott_reaction_diffusion`` (one file per (F, k) pattern per split) and its stats.yaml.

    ``dt_save`` must be a multiple of the 1 s inner step.
    """
    n_sub = int(round(dt_save / DT_INNER))
    if n_sub < 1 or abs(n_sub * DT_INNER - dt_save) > 1e-9:
        raise ValueError(f"{NAME}: dt_save must be a positive multiple of {DT_INNER}, found {dt_save}")
    n_per = _common.per_group(n_trajectories, len(patterns))
    rngs = _common.group_seeds(seed, len(patterns))
    L = domain_extent(resolution)
    coords = np.arange(resolution) * (L / resolution) - L / 2
    prog = _common.Progress(NAME, n_per * len(patterns), log)
    for (label, F, k), rng in zip(patterns, rngs):
        up = upper_state(F, k)
        if label == "bubbles" and up is not None:  # holes in the B-rich state; spots on A = 1 die out here
            u0 = random_spots(rng, n_per, resolution, background=up, spot=(1.0, 0.0))
        else:
            u0 = random_spots(rng, n_per, resolution)
        us = solve(jnp.asarray(u0), jnp.full((n_per,), F, jnp.float32), jnp.full((n_per,), k, jnp.float32),
                   resolution=resolution, n_steps=int(n_steps), n_sub=n_sub, extent=L)
        us = np.asarray(us)  # (n, T, 2, N, N)
        _common.write_group(
            out_dataset_dir,
            dataset_name=NAME,
            stem=_common.file_stem(NAME, {"F": F, "k": k}, label=label),
            splits=splits,
            coords={"x": coords, "y": coords},
            time_=np.arange(n_steps) * dt_save,
            t0_fields={"A": us[:, :, 0], "B": us[:, :, 1]},
            t1_fields={},
            boundary_conditions={"x": "PERIODIC", "y": "PERIODIC"},
            params={"F": F, "k": k},
        )
        prog.update(n_per, f"({label} F={F:g} k={k:g})")
    return _common.finish(out_dataset_dir)
