"""2D incompressible periodic shear flow with a passive tracer (The Well's ``shear_flow``).

    omega_t + u . grad omega = nu lap omega,          nu = 1 / Reynolds
    s_t + u . grad s = (nu / Schmidt) lap s
    u = (psi_y, -psi_x) + U_mean,  lap psi = -omega,  lap p = -div((u . grad) u)   (density 1)

Pseudo-spectral vorticity-streamfunction solver on the periodic unit square (2/3-rule dealiasing, ETDRK2
(Cox-Matthews) with the viscous/diffusive part integrated exactly, fixed step from an advective CFL bound).
(exponax's ``NavierStokesVorticity`` has no passive scalar, hence this compact solver.)
Initial condition as in The Well (Dedalus shear-flow setup), scaled to the unit square: two tanh shear layers
u = 1/2 (tanh((y - y1)/w) - tanh((y - y2)/w)) - 1/2 ... with random width and positions, tracer = the same
profile, a small sinusoidal v perturbation localised at the layers plus weak noise.
Fields: t0 tracer, pressure; t1 velocity (x, y). Parameters: Reynolds, Schmidt.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from tokpre.data.systems import _common

NAME = "shear_flow"
REYNOLDS = (1e3, 2e3, 5e3)  # resolved at 64^2 (1e4 shows tracer Gibbs overshoot)
SCHMIDT = (0.5, 1.0)
CFL = 0.35


def _wavenumbers(n: int, length: float = 1.0):
    kx = 2 * np.pi * np.fft.fftfreq(n, d=length / n)
    ky = 2 * np.pi * np.fft.rfftfreq(n, d=length / n)
    KX, KY = np.meshgrid(kx, ky, indexing="ij")  # (N, N//2+1)
    k2 = KX**2 + KY**2
    kmax = np.pi * n / length
    dealias = (np.abs(KX) < 2 / 3 * kmax) & (np.abs(KY) < 2 / 3 * kmax)
    return KX, KY, k2, dealias


def velocity_from_vorticity(w_hat: jax.Array, mean_uv: jax.Array, KX, KY, k2, n: int):
    """w_hat (B, N, N//2+1), mean_uv (B, 2) -> u, v (B, N, N) with u = psi_y, v = -psi_x, lap psi = -omega."""
    inv = jnp.where(k2 > 0, 1.0 / jnp.where(k2 > 0, k2, 1.0), 0.0)
    psi_hat = w_hat * inv
    u = jnp.fft.irfft2(1j * KY * psi_hat, s=(n, n)) + mean_uv[:, 0, None, None]
    v = jnp.fft.irfft2(-1j * KX * psi_hat, s=(n, n)) + mean_uv[:, 1, None, None]
    return u, v


def pressure(u: jax.Array, v: jax.Array, KX, KY, k2) -> jax.Array:
    """Pressure (zero mean) from lap p = -div((u . grad) u). u, v: (B, N, N) -> (B, N, N)."""
    n = u.shape[-1]
    uh, vh = jnp.fft.rfft2(u), jnp.fft.rfft2(v)
    ux, uy = jnp.fft.irfft2(1j * KX * uh, s=(n, n)), jnp.fft.irfft2(1j * KY * uh, s=(n, n))
    vx, vy = jnp.fft.irfft2(1j * KX * vh, s=(n, n)), jnp.fft.irfft2(1j * KY * vh, s=(n, n))
    src = jnp.fft.rfft2(ux * ux + 2 * uy * vx + vy * vy)  # div((u.grad)u) for div-free u
    inv = jnp.where(k2 > 0, 1.0 / jnp.where(k2 > 0, k2, 1.0), 0.0)
    return jnp.fft.irfft2(src * inv, s=(n, n))


@functools.partial(jax.jit, static_argnames=("n_steps", "n_sub"))
def solve(omega0: jax.Array, tracer0: jax.Array, mean_uv: jax.Array, nu: jax.Array, kappa: jax.Array,
          dt: jax.Array, *, n_steps: int, n_sub: int):
    """Batched rollout on the periodic unit square.

    omega0, tracer0: (B, N, N); mean_uv: (B, 2) mean velocity; nu, kappa: (B,) viscosity / tracer diffusivity;
    dt: scalar inner step. Saves every n_sub steps. Returns dict of (B, n_steps, N, N) arrays:
    tracer, pressure, u, v, omega.
    """
    n = omega0.shape[-1]
    KX, KY, k2, dealias = (jnp.asarray(a) for a in _wavenumbers(n))
    KX, KY, k2 = KX.astype(jnp.float32), KY.astype(jnp.float32), k2.astype(jnp.float32)
    mask = dealias.astype(jnp.float32)
    # ETDRK2 coefficients per trajectory and field: L = -nu k^2 (omega), -kappa k^2 (tracer).
    Lw = -nu[:, None, None] * k2[None]
    Ls = -kappa[:, None, None] * k2[None]
    Lh = jnp.stack([Lw, Ls], axis=1) * dt  # (B, 2, N, N//2+1)
    E = jnp.exp(Lh)
    small = jnp.abs(Lh) < 1e-3
    zs = jnp.where(small, 1.0, Lh)
    p1 = jnp.where(small, 1 + Lh / 2 + Lh * Lh / 6, jnp.expm1(zs) / zs)
    p2 = jnp.where(small, 0.5 + Lh / 6 + Lh * Lh / 24, (jnp.expm1(zs) - zs) / (zs * zs))

    def nonlin(q_hat):  # q_hat (B, 2, N, N//2+1) = (omega_hat, tracer_hat) -> -u.grad q, dealiased
        qd = q_hat * mask
        u, v = velocity_from_vorticity(qd[:, 0], mean_uv, KX, KY, k2, n)
        qx = jnp.fft.irfft2(1j * KX * qd, s=(n, n))
        qy = jnp.fft.irfft2(1j * KY * qd, s=(n, n))
        return -jnp.fft.rfft2(u[:, None] * qx + v[:, None] * qy) * mask

    def step(i, q):
        Nq = nonlin(q)
        a = E * q + dt * p1 * Nq
        return a + dt * p2 * (nonlin(a) - Nq)

    def observe(q):
        u, v = velocity_from_vorticity(q[:, 0], mean_uv, KX, KY, k2, n)
        return dict(tracer=jnp.fft.irfft2(q[:, 1], s=(n, n)), pressure=pressure(u, v, KX, KY, k2), u=u, v=v,
                    omega=jnp.fft.irfft2(q[:, 0], s=(n, n)))

    def interval(q, _):
        q = jax.lax.fori_loop(0, n_sub, step, q)
        return q, observe(q)

    q0 = jnp.fft.rfft2(jnp.stack([omega0, tracer0], axis=1))
    _, obs = jax.lax.scan(interval, q0, None, length=n_steps - 1)
    first = observe(q0)
    return {k: jnp.concatenate([first[k][:, None], jnp.moveaxis(obs[k], 0, 1)], axis=1) for k in first}


def vorticity_from_velocity(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """omega = v_x - u_y spectrally on the unit square. u, v: (..., N, N) -> (..., N, N)."""
    n = u.shape[-1]
    KX, KY, _, _ = _wavenumbers(n)
    return np.fft.irfft2(1j * KX * np.fft.rfft2(v) - 1j * KY * np.fft.rfft2(u), s=(n, n))


def random_shear_layers(rng: np.random.Generator, n_traj: int, n: int):
    """Initial (omega (B,N,N), tracer (B,N,N), mean_uv (B,2)) for random double shear layers on the unit square.

    Layers at y1 ~ U(0.2, 0.3), y2 = y1 + 0.5, width w ~ U(0.04, 0.06); u = 1/2 (tanh((y-y1)/w) -
    tanh((y-y2)/w)) - 1/2 (zero-mean-ish, in [-1/2, 1/2]); tracer = u + 1/2; v perturbation of amplitude
    A ~ U(0.05, 0.15) with wavenumber m in {1, 2, 3} and random phase, Gaussian-localised (width 2 w) at both
    layers, plus 1e-3 white noise on u and v.
    """
    x = np.arange(n) / n
    X, Y = np.meshgrid(x, x, indexing="ij")
    om, tr, mean = [], [], []
    for _ in range(n_traj):
        y1 = rng.uniform(0.2, 0.3)
        y2 = y1 + 0.5
        w = rng.uniform(0.04, 0.06)
        per = lambda d: (d + 0.5) % 1.0 - 0.5  # periodic distance
        # double layer: +1/2 between the layers, -1/2 outside (periodic to within tanh(0.2/0.06) ~ 0.997)
        u = 0.5 * (np.tanh((Y - y1) / w) - np.tanh((Y - y2) / w)) - 0.5
        amp = rng.uniform(0.05, 0.15)
        m = rng.integers(1, 4)
        ph = rng.uniform(0, 2 * np.pi)
        env = np.exp(-(per(Y - y1) ** 2) / (2 * w) ** 2) + np.exp(-(per(Y - y2) ** 2) / (2 * w) ** 2)
        v = amp * np.sin(2 * np.pi * m * X + ph) * env + 1e-3 * rng.standard_normal((n, n))
        u = u + 1e-3 * rng.standard_normal((n, n))
        om.append(vorticity_from_velocity(u, v))
        tr.append(u + 0.5)
        mean.append([u.mean(), v.mean()])
    return (np.asarray(om, np.float32), np.asarray(tr, np.float32), np.asarray(mean, np.float32))


DEFAULTS = dict(resolution=64, n_trajectories=48, n_steps=81, dt_save=0.1, seed=0)


def generate(
    out_dataset_dir: str | Path,
    *,
    resolution: int = 64,
    n_trajectories: int = 48,
    n_steps: int = 81,
    dt_save: float = 0.1,
    seed: int = 0,
    splits: Sequence[float] = (0.8, 0.1, 0.1),
    reynolds: Sequence[float] = REYNOLDS,
    schmidt: Sequence[float] = SCHMIDT,
    log: Callable[[str], None] | None = print,
) -> Path:
    """Write ``shear_flow`` (one file per (Reynolds, Schmidt) per split) and its stats.yaml."""
    params = [(re, sc) for re in reynolds for sc in schmidt]
    n_per = _common.per_group(n_trajectories, len(params))
    rngs = _common.group_seeds(seed, len(params))
    # Fixed inner step: advective CFL with |u| <= 1.5 (initial |u| <= ~0.65 plus margin).
    n_sub = max(1, math.ceil(dt_save / (CFL / (1.5 * resolution))))
    dt = dt_save / n_sub
    x = np.arange(resolution) / resolution
    prog = _common.Progress(NAME, n_per * len(params), log)
    for (re, sc), rng in zip(params, rngs):
        om, tr, mean = random_shear_layers(rng, n_per, resolution)
        nu = jnp.full((n_per,), 1.0 / re, jnp.float32)
        out = solve(jnp.asarray(om), jnp.asarray(tr), jnp.asarray(mean), nu, nu / sc, jnp.float32(dt),
                    n_steps=int(n_steps), n_sub=n_sub)
        out = {k: np.asarray(v) for k, v in out.items()}
        umax = float(np.max(np.abs(out["u"])) + np.max(np.abs(out["v"])))
        if umax * dt * resolution > 1.0:
            raise FloatingPointError(f"{NAME}: CFL violated (max|u|+|v|={umax:.3g}) for Reynolds={re:g}")
        _common.write_group(
            out_dataset_dir,
            dataset_name=NAME,
            stem=_common.file_stem(NAME, {"Reynolds": re, "Schmidt": sc}),
            splits=splits,
            coords={"x": x, "y": x},
            time_=np.arange(n_steps) * dt_save,
            t0_fields={"tracer": out["tracer"], "pressure": out["pressure"]},
            t1_fields={"velocity": np.stack([out["u"], out["v"]], axis=-1)},
            boundary_conditions={"x": "PERIODIC", "y": "PERIODIC"},
            params={"Reynolds": re, "Schmidt": sc},
        )
        prog.update(n_per, f"(Reynolds={re:g} Schmidt={sc:g})")
    return _common.finish(out_dataset_dir)
