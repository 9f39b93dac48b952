"""Train state and its sharded creation.

The state is a pure pytree; the optimiser (an optax transformation) lives outside it, in the step closure.
Only the parameter subtrees named in ``trainable`` are optimised: stage 2's ``frozen`` mode keeps
``params['tokeniser']`` in the state but gives it no optimiser state and computes no gradient for it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from tokpre import sharding as shd


@flax.struct.dataclass
class TrainState:
    step: jax.Array        # int32 ()
    params: Any            # full parameter tree (trainable and frozen parts)
    opt_state: Any         # optimiser state of the trainable subtrees only
    rng: jax.Array         # uint32 (2,) raw PRNG key data, so checkpoints stay plain arrays
    bad_steps: jax.Array   # int32 (): steps whose loss or gradient was non-finite (their update was skipped)


def split_trainable(params: Any, trainable: Sequence[str] | None) -> tuple[Any, Any]:
    """(trainable, frozen) parts of a dict parameter tree; ``trainable=None`` means everything."""
    if trainable is None:
        return params, {}
    missing = [k for k in trainable if k not in params]
    if missing:
        raise KeyError(f"trainable subtrees {missing} not in the parameter tree with keys {sorted(params)}")
    return ({k: v for k, v in params.items() if k in trainable},
            {k: v for k, v in params.items() if k not in trainable})


def merge(trainable: Any, frozen: Any) -> Any:
    return {**frozen, **trainable} if frozen else trainable


def create_sharded_state(init_params: Callable[[jax.Array], Any], tx: optax.GradientTransformation,
                         mesh: Mesh, rules, seed: int,
                         trainable: Sequence[str] | None = None) -> tuple[TrainState, TrainState]:
    """Initialises parameters and optimiser state directly into their shardings.

    ``init_params(rng)`` returns a (possibly logically-boxed) parameter tree. Nothing is materialised whole on
    one device: shapes come from ``jax.eval_shape`` and the init runs under ``jit`` with ``out_shardings``.
    Returns ``(state, state_shardings)``.
    """
    key = jax.random.key(seed)
    boxed = jax.eval_shape(init_params, key)
    p_shardings = shd.params_shardings(boxed, mesh, rules)

    def init(key):
        params = nn.unbox(init_params(key))
        tr, _ = split_trainable(params, trainable)
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(tr),
                          rng=jax.random.key_data(jax.random.fold_in(key, 1)),
                          bad_steps=jnp.zeros((), jnp.int32))

    abstract = jax.eval_shape(init, key)
    tr_params, _ = split_trainable(abstract.params, trainable)
    tr_shard, _ = split_trainable(p_shardings, trainable)
    o_shardings = shd.opt_state_shardings(abstract.opt_state, tr_params, tr_shard, mesh, rules)
    rep = shd.replicated(mesh)
    state_shardings = TrainState(step=rep, params=p_shardings, opt_state=o_shardings, rng=rep, bad_steps=rep)
    state = jax.jit(init, out_shardings=state_shardings)(key)
    return state, state_shardings


def make_train_step(loss_fn: Callable[..., tuple[jax.Array, dict]], tx: optax.GradientTransformation,
                    trainable: Sequence[str] | None = None):
    """A pure ``step(state, batch) -> (state, metrics)``.

    ``loss_fn(params, batch, rng) -> (loss, metrics)``. Gradients are taken only with respect to the
    ``trainable`` subtrees. A non-finite loss or gradient leaves the state unchanged (the step is skipped) and
    increments ``state.bad_steps``; the host stops training on it before anything is checkpointed.
    """

    def step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        key = jax.random.wrap_key_data(state.rng)
        key, sub = jax.random.split(key)
        tr, fr = split_trainable(state.params, trainable)

        def f(tr_params):
            return loss_fn(merge(tr_params, fr), batch, sub)

        (loss, metrics), grads = jax.value_and_grad(f, has_aux=True)(tr)
        updates, new_opt = tx.update(grads, state.opt_state, tr)
        new_tr = optax.apply_updates(tr, updates)
        gnorm = optax.tree.norm(grads)
        ok = jnp.isfinite(loss) & jnp.isfinite(gnorm)
        keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)
        new_state = TrainState(
            step=state.step + 1,
            params=merge(keep(new_tr, tr), fr),
            opt_state=keep(new_opt, state.opt_state),
            rng=jax.random.key_data(key),
            bad_steps=state.bad_steps + (~ok).astype(jnp.int32))
        metrics = {**metrics, "loss": loss, "grad_norm": gnorm}
        return new_state, metrics

    return step


def abstract_with_shardings(tree: Any, shardings: Any) -> Any:
    """ShapeDtypeStructs carrying shardings: the restore target for Orbax."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)
