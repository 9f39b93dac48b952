"""Physics checks of the embedded solvers on tiny grids (Euler, shear flow, Gray-Scott)."""

import math

import jax.numpy as jnp
import numpy as np
import pytest

from tokpre.data.systems import euler, gray_scott, shear_flow


# ------------------------------------------------------------------------------------------------ exact Riemann
def exact_riemann(WL, WR, gamma, xi):
    """Exact solution of the 1D Euler Riemann problem (Toro ch. 4) sampled at xi = (x - x0) / t.

    WL, WR: (rho, u, p); xi: (M,). Returns rho, u, p each (M,).
    """
    rL, uL, pL = WL
    rR, uR, pR = WR
    cL, cR = math.sqrt(gamma * pL / rL), math.sqrt(gamma * pR / rR)
    g1 = (gamma - 1) / (2 * gamma)

    def f(p, r, pk, c):
        if p > pk:  # shock
            A, B = 2 / ((gamma + 1) * r), (gamma - 1) / (gamma + 1) * pk
            q = math.sqrt(A / (p + B))
            return (p - pk) * q, q * (1 - (p - pk) / (2 * (B + p)))
        pr = p / pk  # rarefaction
        return 2 * c / (gamma - 1) * (pr**g1 - 1), 1 / (r * c) * pr ** (-(gamma + 1) / (2 * gamma))

    p = max(1e-8, 0.5 * (pL + pR))
    for _ in range(100):
        fL, dL = f(p, rL, pL, cL)
        fR, dR = f(p, rR, pR, cR)
        dp = (fL + fR + uR - uL) / (dL + dR)
        p = max(1e-10, p - dp)
        if abs(dp) < 1e-14 * p:
            break
    fL, _ = f(p, rL, pL, cL)
    fR, _ = f(p, rR, pR, cR)
    us = 0.5 * (uL + uR) + 0.5 * (fR - fL)
    gm = (gamma - 1) / (gamma + 1)
    out = np.zeros((3, len(xi)))
    for i, s in enumerate(xi):
        if s <= us:  # left of contact
            if p > pL:
                SL = uL - cL * math.sqrt((gamma + 1) / (2 * gamma) * p / pL + g1)
                out[:, i] = (rL, uL, pL) if s < SL else (rL * (p / pL + gm) / (gm * p / pL + 1), us, p)
            else:
                cs = cL * (p / pL) ** g1
                if s < uL - cL:
                    out[:, i] = (rL, uL, pL)
                elif s > us - cs:
                    out[:, i] = (rL * (p / pL) ** (1 / gamma), us, p)
                else:
                    u = 2 / (gamma + 1) * (cL + (gamma - 1) / 2 * uL + s)
                    c = 2 / (gamma + 1) * (cL + (gamma - 1) / 2 * (uL - s))
                    out[:, i] = (rL * (c / cL) ** (2 / (gamma - 1)), u, pL * (c / cL) ** (1 / g1))
        else:
            if p > pR:
                SR = uR + cR * math.sqrt((gamma + 1) / (2 * gamma) * p / pR + g1)
                out[:, i] = (rR, uR, pR) if s > SR else (rR * (p / pR + gm) / (gm * p / pR + 1), us, p)
            else:
                cs = cR * (p / pR) ** g1
                if s > uR + cR:
                    out[:, i] = (rR, uR, pR)
                elif s < us + cs:
                    out[:, i] = (rR * (p / pR) ** (1 / gamma), us, p)
                else:
                    u = 2 / (gamma + 1) * (-cR + (gamma - 1) / 2 * uR + s)
                    c = 2 / (gamma + 1) * (cR - (gamma - 1) / 2 * (uR - s))
                    out[:, i] = (rR * (c / cR) ** (2 / (gamma - 1)), u, pR * (c / cR) ** (1 / g1))
    return out


def test_exact_riemann_sod_star_state():
    # Toro Table 4.2 test 1 (Sod): p* = 0.30313, u* = 0.92745.
    out = exact_riemann((1.0, 0.0, 1.0), (0.125, 0.0, 0.1), 1.4, np.array([0.5]))
    np.testing.assert_allclose(out[1:, 0], [0.92745, 0.30313], rtol=1e-4)


def _sod_l1(nx, t=0.2, ny=4):
    xc = (np.arange(nx) + 0.5) / nx
    left = (xc < 0.5)[:, None] * np.ones((1, ny))
    W0 = np.stack([np.where(left, 1.0, 0.125), 0 * left, 0 * left, np.where(left, 1.0, 0.1)])[None]
    gam = jnp.full((1,), 1.4, jnp.float32)
    U, _ = euler.solve(euler.prim_to_cons(jnp.asarray(W0, jnp.float32), gam), gam, t, 2, False)
    W = np.asarray(euler.cons_to_prim(U[:, -1], gam))[0]  # (4, nx, ny)
    # uniform in y
    np.testing.assert_allclose(W[:, :, 0:1] * np.ones((1, 1, ny)), W, atol=1e-5)
    ex = exact_riemann((1.0, 0.0, 1.0), (0.125, 0.0, 0.1), 1.4, (xc - 0.5) / t)
    return np.mean(np.abs(W[0, :, 0] - ex[0])), np.mean(np.abs(W[3, :, 0] - ex[2]))


def test_sod_shock_tube_converges_to_exact_solution():
    e64 = _sod_l1(64)
    e256 = _sod_l1(256)
    assert e64[0] < 0.02 and e64[1] < 0.015, e64
    assert e256[0] < 0.6 * e64[0] and e256[1] < 0.6 * e64[1], (e64, e256)


def test_euler_periodic_conservation_to_roundoff():
    rng = np.random.default_rng(1)
    gam = jnp.asarray([1.4, 1.13], jnp.float32)
    U0 = euler.prim_to_cons(jnp.asarray(euler.random_quadrants(rng, 2, 32)), gam)
    U, ks = euler.solve(U0, gam, 0.05, 4, True)
    assert int(ks.sum()) > 10  # many substeps actually taken
    s0 = np.asarray(U0, np.float64).sum((2, 3))  # (B, 4)
    s1 = np.asarray(U[:, -1], np.float64).sum((2, 3))
    scale = np.abs(np.asarray(U0, np.float64)).sum((2, 3))
    rel = np.abs(s1 - s0) / scale
    assert rel.max() < 1e-5, rel
    assert np.abs(np.asarray(U[:, -1]) - np.asarray(U0)).max() > 1e-2  # the state did evolve


def test_euler_open_bc_random_quadrants_stay_positive():
    rng = np.random.default_rng(2)
    gam = jnp.asarray([1.13, 1.4, 1.76], jnp.float32)
    U0 = euler.prim_to_cons(jnp.asarray(euler.random_quadrants(rng, 3, 32)), gam)
    U, _ = euler.solve(U0, gam, 0.1, 4, False)
    W = np.asarray(euler.cons_to_prim(U.reshape((-1, 4, 32, 32)), jnp.repeat(gam, 4)))
    assert np.all(np.isfinite(W))
    assert W[:, 0].min() > 0 and W[:, 3].min() > 0


def test_euler_uniform_state_is_preserved():
    W0 = np.ones((1, 4, 8, 8), np.float32) * np.array([1.0, 0.3, -0.2, 0.7], np.float32)[None, :, None, None]
    gam = jnp.full((1,), 1.4, jnp.float32)
    for periodic in (True, False):
        U0 = euler.prim_to_cons(jnp.asarray(W0), gam)
        U, _ = euler.solve(U0, gam, 0.05, 3, periodic)
        np.testing.assert_allclose(np.asarray(U[:, -1]), np.asarray(U0), rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------------------ shear flow
def test_shear_flow_single_mode_decays_at_viscous_rate():
    n, k, amp, nu, sc = 16, 2, 0.3, 1e-2, 0.5
    y = np.arange(n) / n
    u = amp * np.sin(2 * np.pi * k * y)[None, :] * np.ones((n, 1))  # u(y): exact NS solution, omega = -u_y
    om = shear_flow.vorticity_from_velocity(u, np.zeros_like(u))[None].astype(np.float32)
    tr = u[None].astype(np.float32)
    out = shear_flow.solve(jnp.asarray(om), jnp.asarray(tr), jnp.zeros((1, 2)), jnp.asarray([nu]),
                           jnp.asarray([nu / sc]), jnp.float32(0.05), n_steps=3, n_sub=10)
    t = 2 * 10 * 0.05
    kk = (2 * np.pi * k) ** 2
    np.testing.assert_allclose(np.asarray(out["u"][0, -1]), u * np.exp(-nu * kk * t), atol=1e-5)
    np.testing.assert_allclose(np.asarray(out["tracer"][0, -1]), u * np.exp(-nu / sc * kk * t), atol=1e-5)
    assert np.abs(np.asarray(out["v"])).max() < 1e-6


def test_shear_flow_velocity_divergence_free_and_pressure_poisson():
    rng = np.random.default_rng(0)
    n = 32
    om, tr, mean = shear_flow.random_shear_layers(rng, 2, n)
    nu = jnp.full((2,), 1e-3, jnp.float32)
    out = shear_flow.solve(jnp.asarray(om), jnp.asarray(tr), jnp.asarray(mean), nu, nu, jnp.float32(0.01),
                           n_steps=3, n_sub=5)
    u, v, p = (np.asarray(out[k][:, -1], np.float64) for k in ("u", "v", "pressure"))
    KX, KY, k2, _ = shear_flow._wavenumbers(n)
    div = np.fft.irfft2(1j * KX * np.fft.rfft2(u) + 1j * KY * np.fft.rfft2(v), s=(n, n))
    grads = [np.fft.irfft2(1j * K * np.fft.rfft2(f), s=(n, n)) for f in (u, v) for K in (KX, KY)]
    scale = max(np.abs(g).max() for g in grads)  # float32 round-off level of the velocity gradient
    assert np.abs(div).max() < 1e-5 * scale, (np.abs(div).max(), scale)
    # lap p = -(u_x^2 + 2 u_y v_x + v_y^2), checked in physical space
    d = lambda f, K: np.fft.irfft2(1j * K * np.fft.rfft2(f), s=(n, n))
    lap_p = np.fft.irfft2(-k2 * np.fft.rfft2(p), s=(n, n))
    rhs = -(d(u, KX) ** 2 + 2 * d(u, KY) * d(v, KX) + d(v, KY) ** 2)
    rhs -= rhs.mean(axis=(-2, -1), keepdims=True)
    np.testing.assert_allclose(lap_p, rhs, atol=1e-4 * np.abs(rhs).max())
    assert np.abs(p.mean(axis=(-2, -1))).max() < 1e-6


# ------------------------------------------------------------------------------------------------ Gray-Scott
def test_gray_scott_trivial_fixed_point_is_preserved():
    u0 = np.zeros((1, 2, 16, 16), np.float32)
    u0[:, 0] = 1.0
    us = gray_scott.solve(jnp.asarray(u0), jnp.asarray([0.03]), jnp.asarray([0.062]), resolution=16, n_steps=3,
                          n_sub=20, extent=0.25)
    np.testing.assert_allclose(np.asarray(us), np.broadcast_to(u0[:, None], us.shape), atol=1e-6)


def test_gray_scott_pure_diffusion_of_fourier_mode():
    n, L, m, eps = 16, 1.0, 2, 0.1
    x = np.arange(n) * L / n
    a0 = 1.0 + eps * np.cos(2 * np.pi * m * x)[:, None] * np.ones((1, n))
    u0 = np.stack([a0, np.zeros_like(a0)])[None].astype(np.float32)
    # F = k = 0 and B = 0: A_t = D_A lap A exactly.
    us = gray_scott.solve(jnp.asarray(u0), jnp.asarray([0.0]), jnp.asarray([0.0]), resolution=n, n_steps=2,
                          n_sub=100, extent=L)
    t = 100.0
    expect = 1.0 + eps * np.exp(-gray_scott.D_A * (2 * np.pi * m / L) ** 2 * t) * (a0 - 1.0) / eps
    np.testing.assert_allclose(np.asarray(us[0, -1, 0]), expect, atol=1e-5)
    assert abs(expect.max() - 1 - eps) > 1e-2  # the mode decayed measurably


def test_gray_scott_homogeneous_reaction_matches_ode():
    F, k = 0.03, 0.062
    a, b = 0.5, 0.25
    u0 = np.stack([np.full((8, 8), a), np.full((8, 8), b)])[None].astype(np.float32)
    us = np.asarray(gray_scott.solve(jnp.asarray(u0), jnp.asarray([F]), jnp.asarray([k]), resolution=8,
                                     n_steps=2, n_sub=50, extent=0.125))
    # reference: RK4 on the ODE with a fine step
    y = np.array([a, b])
    rhs = lambda y: np.array([-y[0] * y[1] ** 2 + F * (1 - y[0]), y[0] * y[1] ** 2 - (F + k) * y[1]])
    h = 0.01
    for _ in range(5000):
        k1 = rhs(y); k2 = rhs(y + h / 2 * k1); k3 = rhs(y + h / 2 * k2); k4 = rhs(y + h * k3)
        y = y + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    np.testing.assert_allclose(us[0, -1, :, 0, 0], y, rtol=2e-3)
    np.testing.assert_allclose(us[0, -1, 0], us[0, -1, 0, 0, 0], atol=1e-6)  # stays homogeneous


def test_gray_scott_upper_state_is_a_fixed_point():
    F, k = 0.098, 0.057
    A, B = gray_scott.upper_state(F, k)
    assert abs(-A * B * B + F * (1 - A)) < 1e-12 and abs(A * B * B - (F + k) * B) < 1e-12
    assert gray_scott.upper_state(0.058, 0.065) is None


@pytest.mark.parametrize("fn", [lambda r: euler.random_quadrants(r, 2, 16),
                                lambda r: gray_scott.random_spots(r, 2, 16),
                                lambda r: shear_flow.random_shear_layers(r, 2, 16)[0]])
def test_initial_conditions_deterministic_per_seed(fn):
    a = fn(np.random.default_rng(5))
    b = fn(np.random.default_rng(5))
    c = fn(np.random.default_rng(6))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
