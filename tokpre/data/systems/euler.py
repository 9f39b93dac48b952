"""2D compressible Euler, four-quadrant Riemann problems (The Well's ``euler_multi_quadrants_{periodic,open}BC``).

Solver: unsplit MUSCL-Hancock finite volume (van Leer limited slopes of primitive variables, half-step
primitive predictor, HLLC Riemann solver with Davis wave speeds) on a uniform grid of cell centres over the unit
square, adaptive CFL time step per trajectory, periodic or open (zero-gradient ghost cells) boundaries.
A cell whose reconstructed face states would have non-positive density or pressure falls back to first order
(Godunov), which keeps the scheme positive in practice.

State layout: conserved ``U (B, 4, Nx, Ny)`` = (density, momentum_x, momentum_y, energy) with energy the total
energy density ``E = p / (gamma - 1) + rho |u|^2 / 2``; axis -2 is x, axis -1 is y.
Written fields (Well order): t0 energy, density, pressure; t1 momentum (x, y). Parameter: ``gamma``.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from tokpre.data.systems import _common

NAME_PERIODIC = "euler_multi_quadrants_periodicBC"
NAME_OPEN = "euler_multi_quadrants_openBC"
GAMMAS = (1.13, 1.22, 1.3, 1.4, 1.6, 1.76)
CFL = 0.4
_TINY = 1e-12


# ----------------------------------------------------------------------------------------------------------------
# Primitive / conserved conversion. W = (rho, u, v, p), U = (rho, rho u, rho v, E); arrays (B, 4, Nx, Ny).
# ----------------------------------------------------------------------------------------------------------------
def prim_to_cons(W: jax.Array, gamma: jax.Array) -> jax.Array:
    """W (B, 4, ...) primitive -> U (B, 4, ...) conserved; gamma (B,)."""
    g = gamma.reshape((-1,) + (1,) * (W.ndim - 2))
    rho, u, v, p = W[:, 0], W[:, 1], W[:, 2], W[:, 3]
    E = p / (g - 1.0) + 0.5 * rho * (u * u + v * v)
    return jnp.stack([rho, rho * u, rho * v, E], axis=1)


def cons_to_prim(U: jax.Array, gamma: jax.Array) -> jax.Array:
    """U (B, 4, ...) conserved -> W (B, 4, ...) primitive; gamma (B,)."""
    g = gamma.reshape((-1,) + (1,) * (U.ndim - 2))
    rho = U[:, 0]
    u, v = U[:, 1] / rho, U[:, 2] / rho
    p = (g - 1.0) * (U[:, 3] - 0.5 * rho * (u * u + v * v))
    return jnp.stack([rho, u, v, p], axis=1)


def _van_leer(a: jax.Array, b: jax.Array) -> jax.Array:
    """Van Leer (harmonic) limiter of left/right differences; 0 at extrema."""
    ab = a * b
    return jnp.where(ab > 0, 2.0 * ab / (a + b + jnp.where(a + b >= 0, _TINY, -_TINY)), 0.0)


def hllc_flux(WL: jax.Array, WR: jax.Array, g: jax.Array) -> jax.Array:
    """HLLC flux (Toro ch. 10) along the normal direction.

    WL, WR: (B, 4, ...) primitive states (rho, u_n, u_t, p) left/right of the face; g broadcastable gamma.
    Returns the flux (B, 4, ...) of (mass, normal momentum, tangential momentum, energy).
    """
    rL, uL, vL, pL = WL[:, 0], WL[:, 1], WL[:, 2], WL[:, 3]
    rR, uR, vR, pR = WR[:, 0], WR[:, 1], WR[:, 2], WR[:, 3]
    cL = jnp.sqrt(g * pL / rL)
    cR = jnp.sqrt(g * pR / rR)
    SL = jnp.minimum(uL - cL, uR - cR)
    SR = jnp.maximum(uL + cL, uR + cR)
    EL = pL / (g - 1.0) + 0.5 * rL * (uL * uL + vL * vL)
    ER = pR / (g - 1.0) + 0.5 * rR * (uR * uR + vR * vR)
    mL, mR = rL * (SL - uL), rR * (SR - uR)
    Ss = (pR - pL + mL * uL - mR * uR) / (mL - mR)

    def side(r, u, v, p, E, S):
        F = jnp.stack([r * u, r * u * u + p, r * u * v, u * (E + p)], axis=1)
        Uk = jnp.stack([r, r * u, r * v, E], axis=1)
        fac = r * (S - u) / (S - Ss)
        Us = fac[:, None] * jnp.stack(
            [jnp.ones_like(r), Ss, v, E / r + (Ss - u) * (Ss + p / (r * (S - u)))], axis=1
        )
        return F, F + S[:, None] * (Us - Uk)

    FL, FsL = side(rL, uL, vL, pL, EL, SL)
    FR, FsR = side(rR, uR, vR, pR, ER, SR)
    SL_, Ss_, SR_ = SL[:, None], Ss[:, None], SR[:, None]
    return jnp.where(SL_ >= 0, FL, jnp.where(Ss_ >= 0, FsL, jnp.where(SR_ > 0, FsR, FR)))


def _pad(U: jax.Array, periodic: bool, n: int = 2) -> jax.Array:
    mode = "wrap" if periodic else "edge"
    return jnp.pad(U, ((0, 0), (0, 0), (n, n), (n, n)), mode=mode)


def muscl_hancock_step(U: jax.Array, gamma: jax.Array, dt: jax.Array, dx: float, dy: float, periodic: bool) -> jax.Array:
    """One unsplit MUSCL-Hancock step. U (B, 4, Nx, Ny), gamma (B,), dt (B,) -> U (B, 4, Nx, Ny)."""
    g = gamma[:, None, None]
    dtb = dt[:, None, None, None]
    Up = _pad(U, periodic)  # (B, 4, Nx+4, Ny+4)
    W = cons_to_prim(Up, gamma)
    sx = _van_leer(W - jnp.roll(W, 1, axis=2), jnp.roll(W, -1, axis=2) - W)  # per-cell differences
    sy = _van_leer(W - jnp.roll(W, 1, axis=3), jnp.roll(W, -1, axis=3) - W)
    rho, u, v, p = W[:, 0], W[:, 1], W[:, 2], W[:, 3]
    # Primitive half-step predictor: W_t = -A_x W_x - A_y W_y.
    drx, dux, dvx, dpx = sx[:, 0] / dx, sx[:, 1] / dx, sx[:, 2] / dx, sx[:, 3] / dx
    dry, duy, dvy, dpy = sy[:, 0] / dy, sy[:, 1] / dy, sy[:, 2] / dy, sy[:, 3] / dy
    Wt = jnp.stack(
        [
            -(u * drx + rho * dux) - (v * dry + rho * dvy),
            -(u * dux + dpx / rho) - v * duy,
            -u * dvx - (v * dvy + dpy / rho),
            -(u * dpx + g * p * dux) - (v * dpy + g * p * dvy),
        ],
        axis=1,
    )
    Wh = W + 0.5 * dtb * Wt
    faces = [Wh + 0.5 * sx, Wh - 0.5 * sx, Wh + 0.5 * sy, Wh - 0.5 * sy]
    ok = jnp.ones(W.shape[:1] + W.shape[2:], bool)
    for f in faces + [Wh]:
        ok &= (f[:, 0] > 0) & (f[:, 3] > 0)
    okb = ok[:, None]
    Wh = jnp.where(okb, Wh, W)
    sx = jnp.where(okb, sx, 0.0)
    sy = jnp.where(okb, sy, 0.0)
    # x faces: face i+1/2 stored at index i. Left = cell i east face, right = cell i+1 west face.
    WxL = Wh + 0.5 * sx
    WxR = jnp.roll(Wh - 0.5 * sx, -1, axis=2)
    Fx = hllc_flux(WxL, WxR, g)  # (mass, mom_x, mom_y, E)
    # y faces: swap normal/tangential velocity.
    WyL = Wh + 0.5 * sy
    WyR = jnp.roll(Wh - 0.5 * sy, -1, axis=3)
    sw = jnp.array([0, 2, 1, 3])
    Fy = hllc_flux(WyL[:, sw], WyR[:, sw], g)[:, sw]
    dU = (Fx - jnp.roll(Fx, 1, axis=2)) / dx + (Fy - jnp.roll(Fy, 1, axis=3)) / dy
    return U - dtb * dU[:, :, 2:-2, 2:-2]


def max_dt(U: jax.Array, gamma: jax.Array, dx: float, dy: float, cfl: float = CFL) -> jax.Array:
    """Stable unsplit step per trajectory: cfl / max((|u|+c)/dx + (|v|+c)/dy). U (B,4,Nx,Ny) -> (B,)."""
    W = cons_to_prim(U, gamma)
    c = jnp.sqrt(gamma[:, None, None] * W[:, 3] / W[:, 0])
    rate = (jnp.abs(W[:, 1]) + c) / dx + (jnp.abs(W[:, 2]) + c) / dy
    return cfl / jnp.max(rate, axis=(1, 2))


@functools.partial(jax.jit, static_argnames=("n_steps", "periodic", "cfl"))
def solve(U0: jax.Array, gamma: jax.Array, dt_save: float, n_steps: int, periodic: bool, cfl: float = CFL):
    """Integrate a batch on the unit square, saving every ``dt_save``.

    U0: (B, 4, Nx, Ny) conserved; gamma: (B,). Returns (U: (B, n_steps, 4, Nx, Ny), substeps: (n_steps-1,) int).
    Each trajectory takes its own CFL step, clipped to land exactly on the save times.
    """
    nx, ny = U0.shape[-2:]
    dx, dy = 1.0 / nx, 1.0 / ny

    def interval(U, _):
        def cond(c):
            _, t, k = c
            return jnp.any(t < dt_save) & (k < 100000)

        def body(c):
            U, t, k = c
            dt = jnp.clip(jnp.minimum(max_dt(U, gamma, dx, dy, cfl), dt_save - t), 0.0, None)
            return muscl_hancock_step(U, gamma, dt, dx, dy, periodic), jnp.where(dt_save - t <= dt, dt_save, t + dt), k + 1

        U, _, k = jax.lax.while_loop(cond, body, (U, jnp.zeros(U.shape[0], U.dtype), jnp.int32(0)))
        return U, (U, k)

    _, (Us, ks) = jax.lax.scan(interval, U0, None, length=n_steps - 1)
    Us = jnp.concatenate([U0[:, None], jnp.moveaxis(Us, 0, 1)], axis=1)
    return Us, ks


def random_quadrants(rng: np.random.Generator, n: int, resolution: int) -> np.ndarray:
    """Random four-quadrant Riemann initial states: W (n, 4, N, N) primitive (rho, u, v, p), all positive rho, p.

    Split point uniform in [0.25, 0.75]^2; per quadrant rho, p log-uniform in [0.1, 2], velocities uniform in
    [-0.75, 0.75].
    """
    xc = (np.arange(resolution) + 0.5) / resolution
    X, Y = np.meshgrid(xc, xc, indexing="ij")
    W = np.empty((n, 4, resolution, resolution), np.float64)
    for b in range(n):
        x0, y0 = rng.uniform(0.25, 0.75, size=2)
        q = (X >= x0).astype(int) + 2 * (Y >= y0).astype(int)  # quadrant id 0..3
        rho = np.exp(rng.uniform(np.log(0.1), np.log(2.0), 4))
        p = np.exp(rng.uniform(np.log(0.1), np.log(2.0), 4))
        uv = rng.uniform(-0.75, 0.75, (2, 4))
        W[b] = np.stack([rho[q], uv[0][q], uv[1][q], p[q]])
    return W.astype(np.float32)


DEFAULTS = dict(resolution=64, n_trajectories=36, n_steps=81, dt_save=0.015, seed=0)


def _generate(
    name: str,
    periodic: bool,
    out_dataset_dir: str | Path,
    *,
    resolution: int = DEFAULTS["resolution"],
    n_trajectories: int = DEFAULTS["n_trajectories"],
    n_steps: int = DEFAULTS["n_steps"],
    dt_save: float = DEFAULTS["dt_save"],
    seed: int = DEFAULTS["seed"],
    splits: Sequence[float] = (0.8, 0.1, 0.1),
    gammas: Sequence[float] = GAMMAS,
    log: Callable[[str], None] | None = print,
) -> Path:
    n_per = _common.per_group(n_trajectories, len(gammas))
    rngs = _common.group_seeds(seed, len(gammas))
    xc = (np.arange(resolution) + 0.5) / resolution
    prog = _common.Progress(name, n_per * len(gammas), log)
    bc = "PERIODIC" if periodic else "OPEN"
    for gamma, rng in zip(gammas, rngs):
        W0 = random_quadrants(rng, n_per, resolution)
        gam = jnp.full((n_per,), gamma, jnp.float32)
        U, _ = solve(prim_to_cons(jnp.asarray(W0), gam), gam, float(dt_save), int(n_steps), periodic)
        W = cons_to_prim(U.reshape((-1,) + U.shape[2:]), jnp.repeat(gam, n_steps)).reshape(U.shape)
        U, W = np.asarray(U), np.asarray(W)  # (n, T, 4, Nx, Ny)
        if not (np.all(W[:, :, 0] > 0) and np.all(W[:, :, 3] > 0)):
            raise FloatingPointError(f"{name}: non-positive density/pressure for gamma={gamma}")
        _common.write_group(
            out_dataset_dir,
            dataset_name=name,
            stem=_common.file_stem(name, {"gamma": gamma}),
            splits=splits,
            coords={"x": xc, "y": xc},
            time_=np.arange(n_steps) * dt_save,
            t0_fields={"energy": U[:, :, 3], "density": U[:, :, 0], "pressure": W[:, :, 3]},
            t1_fields={"momentum": np.stack([U[:, :, 1], U[:, :, 2]], axis=-1)},
            boundary_conditions={"x": bc, "y": bc},
            params={"gamma": gamma},
        )
        prog.update(n_per, f"(gamma={gamma:g})")
    return _common.finish(out_dataset_dir)




def generate_periodic(out_dataset_dir: str | Path, **kwargs) -> Path:
    """Write ``euler_multi_quadrants_periodicBC`` (one file per gamma per split) and its stats.yaml.

    Keyword arguments (defaults in ``DEFAULTS`` and ``GAMMAS``): resolution, n_trajectories, n_steps, dt_save,
    seed, splits, gammas, log.
    """
    return _generate(NAME_PERIODIC, True, out_dataset_dir, **kwargs)


def generate_open(out_dataset_dir: str | Path, **kwargs) -> Path:
    """Write ``euler_multi_quadrants_openBC`` (outflow ghost cells; one file per gamma per split) and stats.yaml.

    Same keyword arguments as ``generate_periodic``.
    """
    return _generate(NAME_OPEN, False, out_dataset_dir, **kwargs)
