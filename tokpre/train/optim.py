"""Optimisers: SOAP (Shampoo-eigenbasis Adam), AdamW, the lr schedule and freezing of parameter subtrees.

SOAP (Vyas et al. 2024, "SOAP: Improving and Stabilizing Shampoo using Adam") runs Adam in the eigenbasis of
Shampoo's Kronecker-factored preconditioner. Per parameter ``G`` of any rank and per axis ``i`` that is
preconditioned (size <= ``max_precond_dim``) it keeps

* ``L_i`` (d_i, d_i): EMA (``shampoo_beta``) of ``G`` contracted with itself over every other axis;
* ``Q_i`` (d_i, d_i): orthonormal eigenbasis estimate of ``L_i``, columns ordered by decreasing eigenvalue.

Axes not preconditioned use the identity. With ``project(X) = X x_i Q_i^T`` (each ``Q_i^T`` applied on its axis)
and ``back(X) = X x_i Q_i`` one step ``t >= 1`` (the ``t``-th call after the first) is::

    mu   = b1 mu + (1 - b1) G                      # first moment, ORIGINAL basis (as the reference)
    nu   = b2 nu + (1 - b2) project(G)**2          # second moment, ROTATED basis
    u    = back(project(mu) / (sqrt(nu) + eps)) * sqrt(1 - b2**t) / (1 - b1**t)
    L_i  = shampoo_beta L_i + (1 - shampoo_beta) G_(i) G_(i)^T     # after u, so G never rotates itself
    if t % precondition_frequency == 0:            # refresh: one power-iteration step + QR
        order = argsort(-diag(Q_i^T L_i Q_i));  Q_i = qr(L_i Q_i[:, order]).Q;  nu = nu[order along axis i]

Conventions taken from the authors' reference implementation (github.com/nikhilvyas/SOAP, original version):

* The very first call only initialises ``L_i = (1 - shampoo_beta) G G^T`` and ``Q_i = eigh(L_i)`` (descending);
  its update is exactly zero (``soap`` also skips the weight decay on that step), and ``t`` counts from the
  second call, so bias corrections use ``t = count``.
* Keeping ``mu`` in the original basis equals the reference's "project back with the old basis, re-project with
  the new one" at a refresh, because the ``Q_i`` are square orthogonal.
* ``eps`` is added to ``sqrt(nu)`` before bias correction; the correction multiplies the step size.
* 1-D parameters (biases, norm scales) are NOT preconditioned by default (``precondition_1d=False``, as the
  reference): for them SOAP is Adam (with the skipped first step). Scalars are never preconditioned.
* ``merge_dims=True`` reshapes a rank >= 2 parameter by greedily merging consecutive axes while the product stays
  <= ``max_precond_dim`` (reference ``merge_dims``), preconditioning the merged axes.

Everything runs under ``jax.jit``: the first-call initialisation and the refresh are ``lax.cond`` on the step
count, and the state is a pytree of arrays (``None`` marks an identity axis), so it can be sharded.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax import lax

_HIGHEST = lax.Precision.HIGHEST


# ----------------------------------------------------------------------------------------------------------------
# SOAP
# ----------------------------------------------------------------------------------------------------------------
class ScaleBySoapState(NamedTuple):
    """State of :func:`scale_by_soap` (arrays only).

    count: int32 () number of calls so far (the first call only initialises the preconditioners).
    mu:    like params (dtype promoted to >= float32): first moment in the original basis.
    nu:    like params (same dtype): second moment in the eigenbasis (rotated basis).
    stats: per param a tuple over its (possibly merged) axes of ``L_i`` (d_i, d_i), or None (identity axis).
    bases: same structure as ``stats`` with ``Q_i`` (d_i, d_i) float32, or None.
    """
    count: jax.Array
    mu: Any
    nu: Any
    stats: Any
    bases: Any


def _merged_shape(shape: tuple[int, ...], max_dim: int) -> tuple[int, ...]:
    """Greedily merge consecutive axes while their product stays <= ``max_dim`` (reference ``merge_dims``)."""
    new_shape: list[int] = []
    current = 1
    for size in shape:
        if current * size > max_dim:
            if current > 1:
                new_shape.append(current)
                current = size
            else:
                new_shape.append(size)
                current = 1
        else:
            current *= size
    if current > 1 or not new_shape:
        new_shape.append(current)
    return tuple(new_shape)


def _layout(shape: tuple[int, ...], max_precond_dim: int, merge_dims: bool,
            precondition_1d: bool) -> tuple[tuple[int, ...], tuple[bool, ...]]:
    """(work shape, which work axes are preconditioned) for a parameter of ``shape``."""
    if len(shape) == 0:
        return (), ()
    if len(shape) == 1:
        return shape, (precondition_1d and shape[0] <= max_precond_dim,)
    work = _merged_shape(shape, max_precond_dim) if merge_dims else tuple(shape)
    return work, tuple(d <= max_precond_dim for d in work)


def _on_axis(x: jax.Array, m: jax.Array, axis: int) -> jax.Array:
    """``y[..., a, ...] = sum_k m[a, k] x[..., k, ...]`` with ``a, k`` at position ``axis``."""
    y = jnp.tensordot(m, x, axes=([1], [axis]), precision=_HIGHEST)
    return jnp.moveaxis(y, 0, axis)


def _project(x: jax.Array, bases: tuple, back: bool) -> jax.Array:
    """Rotate ``x`` into the eigenbasis (``Q^T`` on each axis) or back (``Q``); None axes are untouched."""
    for axis, q in enumerate(bases):
        if q is not None:
            x = _on_axis(x, q if back else q.T, axis)
    return x


def _axis_outer(g: jax.Array, axis: int) -> jax.Array:
    """``G_(axis) G_(axis)^T``: (d, d), contracting ``g`` with itself over every axis but ``axis``."""
    others = [a for a in range(g.ndim) if a != axis]
    return jnp.tensordot(g, g, axes=(others, others), precision=_HIGHEST)


def _state_dtype(p) -> jnp.dtype:
    """Optimiser-state dtype of a parameter: its dtype promoted to at least float32 (bf16 -> f32, f64 stays)."""
    return jnp.promote_types(p.dtype, jnp.float32)


def _eigh_descending(mat: jax.Array) -> jax.Array:
    """Eigenvectors of a symmetric matrix as columns, by decreasing eigenvalue."""
    _, vecs = jnp.linalg.eigh(mat)
    return vecs[:, ::-1]


def _refresh(stats: tuple, bases: tuple, nu: jax.Array) -> tuple[tuple, jax.Array]:
    """One power-iteration step + QR per preconditioned axis; ``nu`` permuted to the new column order."""
    new_bases = []
    for axis, (lmat, q) in enumerate(zip(stats, bases)):
        if lmat is None:
            new_bases.append(None)
            continue
        lq = jnp.matmul(lmat, q, precision=_HIGHEST)                   # (d, d)
        est_eig = jnp.sum(q * lq, axis=0)                              # diag(Q^T L Q): (d,)
        order = jnp.argsort(-est_eig)
        nu = jnp.take(nu, order, axis=axis)
        new_q, _ = jnp.linalg.qr(lq[:, order])                         # L (Q P) = (L Q) P
        new_bases.append(new_q)
    return tuple(new_bases), nu


def scale_by_soap(b1: float = 0.95, b2: float = 0.95, eps: float = 1e-8, shampoo_beta: float = -1.0,
                  precondition_frequency: int = 10, max_precond_dim: int = 1024, merge_dims: bool = False,
                  precondition_1d: bool = False) -> optax.GradientTransformation:
    """SOAP's preconditioned direction (positive, like ``optax.scale_by_adam``; negate / scale by the lr after).

    Args:
      b1: EMA rate of the first moment (kept in the original basis).
      b2: EMA rate of the second moment (kept in the eigenbasis).
      eps: added to ``sqrt(nu)``.
      shampoo_beta: EMA rate of the Kronecker statistics ``L_i``; ``< 0`` means use ``b2``.
      precondition_frequency: eigenbases are refreshed (power iteration + QR) when ``count % freq == 0``.
      max_precond_dim: axes larger than this keep the identity basis.
      merge_dims: merge consecutive small axes of rank >= 2 parameters (see the module docstring).
      precondition_1d: also precondition 1-D parameters of size <= ``max_precond_dim`` (default: plain Adam).

    The first call returns zero updates (it only initialises the bases from its gradient). See the module
    docstring for the exact algorithm.
    """
    if precondition_frequency < 1:
        raise ValueError(f"scale_by_soap: precondition_frequency must be >= 1, found {precondition_frequency}")
    if max_precond_dim < 1:
        raise ValueError(f"scale_by_soap: max_precond_dim must be >= 1, found {max_precond_dim}")
    beta_s = float(b2 if shampoo_beta < 0 else shampoo_beta)

    def layout(p):
        return _layout(tuple(p.shape), max_precond_dim, merge_dims, precondition_1d)

    def init_fn(params):
        def leaf_stats(p):
            work, pre = layout(p)
            return tuple(jnp.zeros((d, d), _state_dtype(p)) if on else None for d, on in zip(work, pre))

        def leaf_bases(p):
            work, pre = layout(p)
            return tuple(jnp.eye(d, dtype=_state_dtype(p)) if on else None for d, on in zip(work, pre))

        zeros = lambda p: jnp.zeros(p.shape, _state_dtype(p))
        return ScaleBySoapState(count=jnp.zeros((), jnp.int32),
                                mu=jax.tree.map(zeros, params), nu=jax.tree.map(zeros, params),
                                stats=jax.tree.map(leaf_stats, params), bases=jax.tree.map(leaf_bases, params))

    def leaf_update(g, mu, nu, stats, bases, count):
        shape = g.shape
        work, _ = layout(g)
        dtype = mu.dtype                                                # state dtype (>= float32)
        gw = g.astype(dtype).reshape(work)                              # (*work)
        new_stats = tuple(None if lmat is None else beta_s * lmat + (1.0 - beta_s) * _axis_outer(gw, axis)
                          for axis, lmat in enumerate(stats))

        def first_call(_):
            new_bases = tuple(None if lmat is None else _eigh_descending(lmat) for lmat in new_stats)
            return jnp.zeros(shape, dtype), mu, nu, new_bases

        def later_call(_):
            t = count.astype(dtype)
            g_rot = _project(gw, bases, back=False)
            new_mu = b1 * mu + (1.0 - b1) * g.astype(dtype)
            nu_w = b2 * nu.reshape(work) + (1.0 - b2) * jnp.square(g_rot)
            mu_rot = _project(new_mu.reshape(work), bases, back=False)
            step = _project(mu_rot / (jnp.sqrt(nu_w) + eps), bases, back=True)
            step = step * (jnp.sqrt(1.0 - b2 ** t) / (1.0 - b1 ** t))
            new_bases, nu_w = lax.cond(count % precondition_frequency == 0,
                                       lambda ops: _refresh(*ops), lambda ops: (ops[1], ops[2]),
                                       (new_stats, bases, nu_w))
            return step.reshape(shape), new_mu, nu_w.reshape(shape), new_bases

        upd, new_mu, new_nu, new_bases = lax.cond(count == 0, first_call, later_call, None)
        return upd.astype(g.dtype), new_mu, new_nu, new_stats, new_bases

    def update_fn(updates, state, params=None):
        del params
        treedef = jax.tree.structure(updates)
        g_leaves = treedef.flatten_up_to(updates)
        outs = [leaf_update(g, mu, nu, st, bs, state.count) for g, mu, nu, st, bs in zip(
            g_leaves, treedef.flatten_up_to(state.mu), treedef.flatten_up_to(state.nu),
            treedef.flatten_up_to(state.stats), treedef.flatten_up_to(state.bases))]
        cols = [treedef.unflatten([o[k] for o in outs]) for k in range(5)]
        new_state = ScaleBySoapState(count=optax.safe_increment(state.count), mu=cols[1], nu=cols[2],
                                     stats=cols[3], bases=cols[4])
        return cols[0], new_state

    return optax.GradientTransformation(init_fn, update_fn)


class _DecayAfterFirstState(NamedTuple):
    count: jax.Array  # int32 ()


def _add_decayed_weights_after_first(weight_decay: float, mask: Any = None) -> optax.GradientTransformation:
    """``optax.add_decayed_weights`` that adds nothing on the first call (SOAP's skipped first step)."""
    inner = optax.add_decayed_weights(weight_decay, mask)

    def init_fn(params):
        return (_DecayAfterFirstState(jnp.zeros((), jnp.int32)), inner.init(params))

    def update_fn(updates, state, params=None):
        own, inner_state = state
        decayed, inner_state = inner.update(updates, inner_state, params)
        first = own.count == 0
        out = jax.tree.map(lambda u, d: jnp.where(first, u, d), updates, decayed)
        return out, (_DecayAfterFirstState(optax.safe_increment(own.count)), inner_state)

    return optax.GradientTransformation(init_fn, update_fn)


def soap(learning_rate: float | Callable[[jax.Array], jax.Array], b1: float = 0.95, b2: float = 0.95,
         eps: float = 1e-8, weight_decay: float = 0.0, shampoo_beta: float = -1.0,
         precondition_frequency: int = 10, max_precond_dim: int = 1024, merge_dims: bool = False,
         precondition_1d: bool = False, mask: Any = None) -> optax.GradientTransformation:
    """SOAP with decoupled weight decay, composed like ``optax.adamw``.

    ``update = -lr * (soap_direction + weight_decay * param)`` (``mask`` selects the decayed params, as in
    ``optax.adamw``); on the first call the whole update is zero. ``learning_rate`` may be a schedule of the step.
    """
    parts = [scale_by_soap(b1=b1, b2=b2, eps=eps, shampoo_beta=shampoo_beta,
                           precondition_frequency=precondition_frequency, max_precond_dim=max_precond_dim,
                           merge_dims=merge_dims, precondition_1d=precondition_1d)]
    if weight_decay:
        parts.append(_add_decayed_weights_after_first(weight_decay, mask))
    parts.append(optax.scale_by_learning_rate(learning_rate))
    return optax.chain(*parts)


# ----------------------------------------------------------------------------------------------------------------
# Schedule, factory, freezing
# ----------------------------------------------------------------------------------------------------------------
def warmup_cosine_schedule(lr: float, warmup_steps: int, total_steps: int,
                           min_lr_ratio: float = 0.1) -> Callable[[jax.Array], jax.Array]:
    """Linear warmup ``0 -> lr`` over ``warmup_steps``, then cosine decay to ``min_lr_ratio * lr`` at
    ``total_steps`` (constant afterwards). ``schedule(step)`` takes an int step (0-based) and returns float32."""
    if total_steps <= warmup_steps:
        raise ValueError(f"optimizer config: total_steps ({total_steps}) must exceed warmup_steps ({warmup_steps})")
    if warmup_steps < 0:
        raise ValueError(f"optimizer config: warmup_steps must be >= 0, found {warmup_steps}")
    min_lr = lr * min_lr_ratio
    decay_len = float(total_steps - warmup_steps)

    def schedule(step):
        step = jnp.asarray(step, jnp.float32)
        warm = lr * step / max(warmup_steps, 1)
        progress = jnp.clip((step - warmup_steps) / decay_len, 0.0, 1.0)
        cosine = min_lr + (lr - min_lr) * 0.5 * (1.0 + jnp.cos(math.pi * progress))
        return jnp.where(step < warmup_steps, warm, cosine).astype(jnp.float32)

    return schedule


def _decay_mask(params: Any) -> Any:
    """Weight decay only on parameters of rank >= 2 (not biases, norm scales or scalars)."""
    return jax.tree.map(lambda p: p.ndim >= 2, params)


def make_optimizer(cfg) -> tuple[optax.GradientTransformation, Callable[[jax.Array], jax.Array]]:
    """(optax transformation, lr schedule) from an ml_collections ConfigDict.

    Required keys: ``name`` ('adamw' | 'soap'), ``lr``, ``warmup_steps``, ``total_steps``.
    Optional keys (default): ``min_lr_ratio`` (0.1), ``weight_decay`` (0.0, applied to rank >= 2 params only),
    ``b1`` (0.9 adamw / 0.95 soap), ``b2`` (0.999 adamw / 0.95 soap), ``eps`` (1e-8), ``grad_clip`` (0.0: global
    norm clipping first in the chain, 0 disables), and for soap ``precondition_frequency`` (10),
    ``max_precond_dim`` (1024), ``shampoo_beta`` (-1), ``merge_dims`` (False), ``precondition_1d`` (False).
    """
    for key in ("name", "lr", "warmup_steps", "total_steps"):
        if key not in cfg:
            raise KeyError(f"optimizer config: missing required key '{key}' (found keys {sorted(cfg.keys())})")
    name = cfg["name"]
    get = lambda k, d: cfg[k] if k in cfg else d
    schedule = warmup_cosine_schedule(float(cfg["lr"]), int(cfg["warmup_steps"]), int(cfg["total_steps"]),
                                      float(get("min_lr_ratio", 0.1)))
    wd = float(get("weight_decay", 0.0))
    eps = float(get("eps", 1e-8))
    if name == "adamw":
        tx = optax.adamw(schedule, b1=float(get("b1", 0.9)), b2=float(get("b2", 0.999)), eps=eps,
                         weight_decay=wd, mask=_decay_mask)
    elif name == "soap":
        tx = soap(schedule, b1=float(get("b1", 0.95)), b2=float(get("b2", 0.95)), eps=eps, weight_decay=wd,
                  shampoo_beta=float(get("shampoo_beta", -1.0)),
                  precondition_frequency=int(get("precondition_frequency", 10)),
                  max_precond_dim=int(get("max_precond_dim", 1024)), merge_dims=bool(get("merge_dims", False)),
                  precondition_1d=bool(get("precondition_1d", False)), mask=_decay_mask)
    else:
        raise ValueError(f"optimizer config: name must be 'adamw' or 'soap', found {name!r}")
    clip = float(get("grad_clip", 0.0))
    if clip < 0:
        raise ValueError(f"optimizer config: grad_clip must be >= 0 (0 disables), found {clip}")
    if clip > 0:
        tx = optax.chain(optax.clip_by_global_norm(clip), tx)
    return tx, schedule


def masked_trainable(tx: optax.GradientTransformation, trainable_mask: Any) -> optax.GradientTransformation:
    """Apply ``tx`` to the trainable parameters only; frozen ones get zero updates and no optimiser state.

    ``trainable_mask`` is a pytree of bools with the structure of the params or a prefix of it, e.g.
    ``{'tokeniser': False, 'processor': True}``. Built on ``optax.multi_transform``: the inner state of ``tx``
    holds ``optax.MaskedNode`` (no arrays) for frozen leaves, and frozen leaves go through ``optax.set_to_zero``.
    Frozen leaves reach ``tx`` neither as updates nor as params (they are masked out before it).
    """
    def labels(params):
        def broadcast(flag, subtree):
            if not isinstance(flag, (bool, int)) and not hasattr(flag, "dtype"):
                raise TypeError(f"masked_trainable: mask leaves must be bools, found {type(flag).__name__}")
            label = "trainable" if bool(flag) else "frozen"
            return jax.tree.map(lambda _: label, subtree)
        return jax.tree.map(broadcast, trainable_mask, params)

    return optax.multi_transform({"trainable": tx, "frozen": optax.set_to_zero()}, labels)
