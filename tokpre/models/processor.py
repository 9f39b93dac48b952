"""Space-time transformer processor over latent tokens (Walrus-style, factorised attention).

The processor takes the tokeniser's latent frames `z: (B, T', *n, L)` (n = latent grid, 2D or 3D) and predicts
the next latent frame `(B, 1, *n, L)`. Each block is

    x = x + SpaceAttention(RMSNorm(x))   # within each frame, over the latent grid, axial RoPE
    x = x + TimeAttention(RMSNorm(x))    # causal over time, at each grid location, RoPE in time
    x = x + MLP(RMSNorm(x))

with QK-norm (RMSNorm on q and k per head) in both attentions. Because time attention is causal and every other
operation acts within one frame, the output at time position i depends only on frames <= i, so one forward pass
gives teacher-forced next-frame predictions for every position (`predict_all`).

Stability default (tokpre): the out-projection d_model -> L is zero-initialised. With `predict_increment=True`
the initial model is therefore the persistence forecast `z_next == z[:, -1:]`, and training starts from a small
increment. The out-projection still receives gradient at step 0 (d out / d kernel = features), so nothing is dead.

Parameters carry logical axis names (see tokpre/sharding.py rules):
  in-projection ("latent", "embed"), out-projection ("embed", "latent"),
  q/k/v ("embed", "heads", "kv"), attention out ("heads", "kv", "embed"),
  MLP ("embed", "mlp") / ("mlp", "embed"), norm scales ("norm",).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import flax.linen as nn

Dtype = Any

_DEFAULT_KERNEL_INIT = nn.initializers.lecun_normal()


class RMSNorm(nn.Module):
    """RMS normalisation over the last axis with a learned scale (logical axis ("norm",)).

    Statistics are computed in float32 whatever the input dtype; the result is cast to `dtype`.
    """

    eps: float = 1e-6
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """x: (..., F) -> (..., F)."""
        scale = self.param(
            "scale",
            nn.with_logical_partitioning(nn.initializers.ones_init(), ("norm",)),
            (x.shape[-1],),
            self.param_dtype,
        )
        x32 = x.astype(jnp.float32)
        inv = jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.eps)
        return (x32 * inv * scale.astype(jnp.float32)).astype(self.dtype)


def rope_frequencies(n_rot: int, base: float) -> jax.Array:
    """Inverse frequencies for `n_rot` rotated dims (n_rot even): (n_rot // 2,) float32."""
    if n_rot % 2:
        raise ValueError(f"processor.py rope_frequencies: n_rot must be even, found {n_rot}")
    return base ** (-jnp.arange(0, n_rot, 2, dtype=jnp.float32) / n_rot)


def apply_rope(x: jax.Array, positions: jax.Array, base: float, n_rot: int, offset: int = 0) -> jax.Array:
    """Rotate dims [offset, offset + n_rot) of the head dimension by angle position * frequency.

    x: (batch, S, H, K); positions: (S,) float32. Pairs are (first half, second half) of the rotated slice
    (the GPT-NeoX convention). Dims outside the slice pass through unchanged.
    """
    if n_rot == 0:
        return x
    freqs = rope_frequencies(n_rot, base)  # (n_rot/2,)
    angles = positions[:, None].astype(jnp.float32) * freqs[None, :]  # (S, n_rot/2)
    cos = jnp.cos(angles)[None, :, None, :]  # (1, S, 1, n_rot/2)
    sin = jnp.sin(angles)[None, :, None, :]
    seg = x[..., offset:offset + n_rot].astype(jnp.float32)
    x1, x2 = seg[..., : n_rot // 2], seg[..., n_rot // 2:]
    rot = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x.dtype)
    return jnp.concatenate([x[..., :offset], rot, x[..., offset + n_rot:]], axis=-1)


def axial_rope(x: jax.Array, grid: Sequence[int], base: float) -> jax.Array:
    """Axial RoPE for tokens on a D-dim grid flattened row-major: x (batch, prod(grid), H, K).

    The head dim is split into D equal even slices (2 * floor(K / (2 D)) dims each), slice a rotated by the token's
    integer coordinate along grid axis a; leftover dims (K mod 2D) are not rotated. Attention scores then depend
    only on coordinate differences per axis.
    """
    k = x.shape[-1]
    d = len(grid)
    n_rot = 2 * (k // (2 * d))
    if n_rot == 0:
        raise ValueError(
            f"processor.py axial_rope: head dim {k} too small for {d}-D axial RoPE (need >= {2 * d}); "
            "raise d_model or lower num_heads"
        )
    coords = jnp.meshgrid(*[jnp.arange(g, dtype=jnp.float32) for g in grid], indexing="ij")
    for a, c in enumerate(coords):
        x = apply_rope(x, c.reshape(-1), base, n_rot, offset=a * n_rot)
    return x


class Attention(nn.Module):
    """Multi-head self-attention with QK-norm and RoPE, over axis 1 of (batch, S, F).

    `grid` given: axial RoPE over the flattened grid (space attention, bidirectional).
    `grid` None: 1-D RoPE over sequence positions; `causal` selects a causal mask (time attention).
    """

    num_heads: int
    head_dim: int
    causal: bool = False
    rope_base: float = 100.0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, grid: tuple[int, ...] | None = None) -> jax.Array:
        """x: (batch, S, F) -> (batch, S, F)."""
        features = x.shape[-1]

        def proj(name: str) -> jax.Array:
            return nn.DenseGeneral(
                features=(self.num_heads, self.head_dim),
                axis=-1,
                use_bias=False,
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                kernel_init=nn.with_logical_partitioning(_DEFAULT_KERNEL_INIT, ("embed", "heads", "kv")),
                name=name,
            )(x)  # (batch, S, H, K)

        q, k, v = proj("query"), proj("key"), proj("value")
        q = RMSNorm(dtype=self.dtype, param_dtype=self.param_dtype, name="query_norm")(q)
        k = RMSNorm(dtype=self.dtype, param_dtype=self.param_dtype, name="key_norm")(k)
        if grid is not None:
            q = axial_rope(q, grid, self.rope_base)
            k = axial_rope(k, grid, self.rope_base)
        else:
            pos = jnp.arange(x.shape[1], dtype=jnp.float32)
            n_rot = 2 * (self.head_dim // 2)
            q = apply_rope(q, pos, self.rope_base, n_rot)
            k = apply_rope(k, pos, self.rope_base, n_rot)
        out = jax.nn.dot_product_attention(q, k, v, is_causal=self.causal)  # (batch, S, H, K)
        return nn.DenseGeneral(
            features=features,
            axis=(-2, -1),
            use_bias=False,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            kernel_init=nn.with_logical_partitioning(_DEFAULT_KERNEL_INIT, ("heads", "kv", "embed")),
            name="out",
        )(out)


class MLP(nn.Module):
    """Two-layer GELU MLP, d_model -> hidden -> d_model, no biases."""

    hidden: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """x: (..., F) -> (..., F)."""
        features = x.shape[-1]
        h = nn.Dense(
            self.hidden,
            use_bias=False,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            kernel_init=nn.with_logical_partitioning(_DEFAULT_KERNEL_INIT, ("embed", "mlp")),
            name="wi",
        )(x)
        h = nn.gelu(h)
        return nn.Dense(
            features,
            use_bias=False,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            kernel_init=nn.with_logical_partitioning(_DEFAULT_KERNEL_INIT, ("mlp", "embed")),
            name="wo",
        )(h)


class SpaceTimeBlock(nn.Module):
    """Pre-norm residual block: space attention, causal time attention, MLP."""

    num_heads: int
    head_dim: int
    mlp_hidden: int
    dropout_rate: float = 0.0
    rope_base: float = 100.0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool = True) -> jax.Array:
        """x: (B, T', *n, F) -> (B, T', *n, F)."""
        b, t = x.shape[:2]
        grid = tuple(x.shape[2:-1])
        f = x.shape[-1]
        n_tok = math.prod(grid)
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        drop = nn.Dropout(self.dropout_rate)

        # Space: each frame is a sequence of prod(n) tokens.
        h = RMSNorm(name="space_norm", **kw)(x).reshape(b * t, n_tok, f)
        h = Attention(self.num_heads, self.head_dim, causal=False, rope_base=self.rope_base,
                      name="space_attn", **kw)(h, grid=grid)
        x = x + drop(h.reshape(x.shape), deterministic=deterministic)

        # Time: each grid location is a causal sequence of T' tokens.
        h = RMSNorm(name="time_norm", **kw)(x).reshape(b, t, n_tok, f)
        h = jnp.swapaxes(h, 1, 2).reshape(b * n_tok, t, f)
        h = Attention(self.num_heads, self.head_dim, causal=True, rope_base=self.rope_base,
                      name="time_attn", **kw)(h)
        h = jnp.swapaxes(h.reshape(b, n_tok, t, f), 1, 2).reshape(x.shape)
        x = x + drop(h, deterministic=deterministic)

        h = MLP(self.mlp_hidden, name="mlp", **kw)(RMSNorm(name="mlp_norm", **kw)(x))
        return x + drop(h, deterministic=deterministic)


class Processor(nn.Module):
    """Space-time transformer: latent frames (B, T', *n, L) -> next latent frame (B, 1, *n, L).

    Attributes:
      d_model: token width; must be divisible by num_heads.
      num_layers: number of SpaceTimeBlocks.
      num_heads: attention heads (head_dim = d_model // num_heads).
      mlp_ratio: MLP hidden width = mlp_ratio * d_model.
      latent_channels: L, channels of the tokeniser latent.
      predict_increment: output = z[:, -1:] + delta (True) or the out-projection itself (False).
      zero_init_out: zero-initialise the out-projection (with predict_increment: persistence at init).
      dropout_rate: residual dropout (needs a 'dropout' rng when deterministic=False and rate > 0).
      rope_base: RoPE base for space and time (small grids and windows: 100 spreads 4-8 frequencies usefully).
      remat: rematerialise each block in the backward pass (memory for compute).
      dtype / param_dtype: compute / parameter dtypes. The output is float32 (residual added in float32).
    """

    d_model: int = 128
    num_layers: int = 4
    num_heads: int = 4
    mlp_ratio: int = 4
    latent_channels: int = 16
    predict_increment: bool = True
    zero_init_out: bool = True
    dropout_rate: float = 0.0
    rope_base: float = 100.0
    remat: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def _check(self, z: jax.Array) -> None:
        if z.ndim not in (5, 6):
            raise ValueError(
                f"processor.py Processor: z must be (B, T', *n, L) with 2 or 3 grid axes, found shape {z.shape}"
            )
        if z.shape[-1] != self.latent_channels:
            raise ValueError(
                f"processor.py Processor: last axis of z must be latent_channels={self.latent_channels}, "
                f"found {z.shape[-1]} (shape {z.shape}); check config.model.processor.latent_channels"
            )
        if self.d_model % self.num_heads:
            raise ValueError(
                f"processor.py Processor: d_model={self.d_model} not divisible by num_heads={self.num_heads}"
            )

    @nn.compact
    def predict_all(self, z: jax.Array, *, deterministic: bool = True) -> jax.Array:
        """Teacher-forced next-frame predictions: z (B, T', *n, L) -> (B, T', *n, L).

        Output position i predicts latent frame i + 1 and depends only on frames <= i (causal in time).
        """
        self._check(z)
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        x = nn.Dense(
            self.d_model,
            use_bias=False,
            kernel_init=nn.with_logical_partitioning(_DEFAULT_KERNEL_INIT, ("latent", "embed")),
            name="in_proj",
            **kw,
        )(z.astype(self.dtype))  # (B, T', *n, d_model)
        block_cls = nn.remat(SpaceTimeBlock, static_argnums=(2,)) if self.remat else SpaceTimeBlock
        for i in range(self.num_layers):
            x = block_cls(
                num_heads=self.num_heads,
                head_dim=self.d_model // self.num_heads,
                mlp_hidden=self.mlp_ratio * self.d_model,
                dropout_rate=self.dropout_rate,
                rope_base=self.rope_base,
                name=f"block_{i}",
                **kw,
            )(x, deterministic)
        x = RMSNorm(name="final_norm", **kw)(x)
        out_init = nn.initializers.zeros_init() if self.zero_init_out else _DEFAULT_KERNEL_INIT
        delta = nn.Dense(
            self.latent_channels,
            use_bias=False,
            kernel_init=nn.with_logical_partitioning(out_init, ("embed", "latent")),
            name="out_proj",
            **kw,
        )(x).astype(jnp.float32)  # (B, T', *n, L)
        if self.predict_increment:
            return z.astype(jnp.float32) + delta
        return delta

    def __call__(self, z: jax.Array, *, deterministic: bool = True) -> jax.Array:
        """Next latent frame: z (B, T', *n, L) -> (B, 1, *n, L), predicted from the last time position."""
        return self.predict_all(z, deterministic=deterministic)[:, -1:]
