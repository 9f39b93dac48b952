"""Causal spatiotemporal conv autoencoder with runtime compression and field-indexed input/output layers.

    x (B, T, *N, C) --lift[field_ids]--> (B, T, *N, w0)
      --stage 0: FlexCausalConv stride (t, s_0) -> norm -> act -> depth x ResBlock-->   (widths[0])
      --stage i: FlexCausalConv stride (1, s_i) -> norm -> act -> depth x ResBlock-->   (widths[i])
      --1x1 projection--> z (B, T/t, *(N/s), L)
    z --1x1--> widths[-1] --[norm, act, ResBlocks, FlexCausalConvTranspose stride (., s_i)] for i = n-1..0-->
      --norm -> act -> head[field_ids]--> (B, T, *N, C)

* Runtime compression (Walrus CSM extended to time): ``compression=(t, s)`` is a static call argument; the total
  spatial factor ``s`` is split over the stages by ``split_spatial_factor`` (4 -> (2, 2), 8 -> (4, 2),
  16 -> (4, 4), 32 -> (8, 4) for two stages) and ``t`` is the time stride of the first encoder stage (and of the
  last decoder stage). Kernels are fixed (>= the largest stride their stage ever uses), so one parameter set
  serves every allowed ``(t, s)``.
* Causality: every conv is causal in time (see flexconv.py) and norms act per position over channels only, so a
  latent frame j depends only on input frames < (j + 1) * t and reconstructed block j only on latents <= j.
* Boundaries: circular padding on periodic axes, replicate otherwise (static ``periodic`` tuple).
* Field-indexed layers: the encoder lift multiplies the C input channels by ``lift_table[field_ids]`` (C, w0) and
  the decoder head gives channel c as ``h . head_table[field_ids[c]] + head_bias[field_ids[c]]``, so a tokeniser
  trained on one system loads for any other system sharing the global field vocabulary; rows of fields never
  seen keep their initial values (they receive exactly zero gradient).
* Patch jittering (Walrus): ``jitter_roll`` / ``unroll`` roll periodic axes by a random offset below one total
  stride before encoding and undo it after decoding.

Parameter tree: ``{'encoder': ..., 'decoder': ...}`` with logical axis names: conv kernels
``("conv_t", "conv_h", "conv_w"[, "conv_d"], "conv_in", "conv_out")``, field tables ``("vocab", "embed")``,
vocabulary bias ``("vocab",)``, lift bias ``("embed",)``, norms ``("norm",)``.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import flax.linen as nn

from tokpre.models.flexconv import FlexCausalConv, FlexCausalConvTranspose

Dtype = Any


# ----------------------------------------------------------------------------------------------------------------
# Static helpers
# ----------------------------------------------------------------------------------------------------------------

def _prime_factors(n: int) -> list[int]:
    out, p = [], 2
    while p * p <= n:
        while n % p == 0:
            out.append(p)
            n //= p
        p += 1
    if n > 1:
        out.append(n)
    return out


def split_spatial_factor(s: int, n_stages: int) -> tuple[int, ...]:
    """Split a total spatial stride ``s`` into per-stage strides whose product is ``s``.

    Prime factors, largest first, go to the stage with the smallest product so far (ties: the earliest stage),
    so earlier stages get the larger strides: with two stages 4 -> (2, 2), 8 -> (4, 2), 16 -> (4, 4),
    32 -> (8, 4) (Walrus' CSM table).
    """
    if s < 1 or n_stages < 1:
        raise ValueError(f"tokeniser: spatial factor and stage count must be >= 1, found s={s}, n_stages={n_stages}")
    strides = [1] * n_stages
    for p in sorted(_prime_factors(s), reverse=True):
        i = min(range(n_stages), key=lambda k: (strides[k], k))
        strides[i] *= p
    return tuple(strides)


def compression_ratio(x_shape: Sequence[int], compression: tuple[int, int], latent_channels: int) -> float:
    """Number of input values per latent value for input ``x_shape = (B, T, *N, C)`` at ``compression=(t, s)``."""
    t, s = compression
    _, T, *N, C = x_shape
    n_in = T * math.prod(N) * C
    n_lat = (T // t) * math.prod(n // s for n in N) * latent_channels
    return n_in / n_lat


def _check_periodic(periodic: Sequence[bool], n_spatial_dims: int) -> tuple[bool, ...]:
    periodic = tuple(bool(p) for p in periodic)
    if len(periodic) != n_spatial_dims:
        raise ValueError(f"tokeniser: periodic must have one entry per spatial axis "
                         f"(model.tokeniser.n_spatial_dims={n_spatial_dims}), found {periodic}")
    return periodic


# ----------------------------------------------------------------------------------------------------------------
# Patch jittering (pure functions; the train step applies them around encode/decode)
# ----------------------------------------------------------------------------------------------------------------

def jitter_roll(x: jax.Array, key: jax.Array, periodic: Sequence[bool],
                stride: int | Sequence[int]) -> tuple[jax.Array, jax.Array]:
    """Roll each sample along its periodic axes by a random offset in ``[0, stride)``.

    Args:
      x: ``(B, T, *N, C)``.
      key: PRNG key.
      periodic: static, one bool per spatial axis; non-periodic axes are never rolled (shift 0).
      stride: the total spatial stride of the encoder (int, or one per spatial axis).
    Returns:
      ``(x_rolled, shifts)`` with ``shifts: (B, D)`` int32 (one offset per sample and axis).
    """
    periodic = tuple(bool(p) for p in periodic)
    n_sp = x.ndim - 3
    if len(periodic) != n_sp:
        raise ValueError(f"tokeniser.jitter_roll: periodic has {len(periodic)} entries, x {x.shape} has {n_sp} "
                         f"spatial axes")
    strides = (int(stride),) * n_sp if np.ndim(stride) == 0 else tuple(int(s) for s in stride)
    maxval = jnp.asarray([s if p else 1 for s, p in zip(strides, periodic)], jnp.int32)
    shifts = jax.random.randint(key, (x.shape[0], n_sp), 0, maxval, dtype=jnp.int32)
    return _roll_per_sample(x, shifts), shifts


def unroll(y: jax.Array, shifts: jax.Array, periodic: Sequence[bool]) -> jax.Array:
    """Undo ``jitter_roll``: roll ``y (B, T, *N, C)`` back by ``-shifts (B, D)`` on the periodic axes."""
    periodic = tuple(bool(p) for p in periodic)
    mask = jnp.asarray(periodic, jnp.int32)
    return _roll_per_sample(y, -shifts * mask)


def _roll_per_sample(x: jax.Array, shifts: jax.Array) -> jax.Array:
    n_sp = x.ndim - 3

    def one(xi, si):  # xi: (T, *N, C), si: (D,)
        return jnp.roll(xi, tuple(si[d] for d in range(n_sp)), axis=tuple(range(1, 1 + n_sp)))

    return jax.vmap(one)(x, shifts)


# ----------------------------------------------------------------------------------------------------------------
# Layers
# ----------------------------------------------------------------------------------------------------------------

class ChannelNorm(nn.Module):
    """Normalisation over channels at each (sample, time, position): kind "rms" (RMSNorm) or "layer" (LayerNorm).

    Acting per position keeps the network causal in time and shift-equivariant in space.
    """

    kind: str = "rms"
    eps: float = 1e-6
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """x: (..., F) -> (..., F)."""
        f = x.shape[-1]
        scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones_init(), ("norm",)), (f,),
                           self.param_dtype)
        x32 = x.astype(jnp.float32)
        if self.kind == "rms":
            y = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.eps)
            return (y * scale).astype(self.dtype)
        if self.kind == "layer":
            bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros_init(), ("norm",)), (f,),
                              self.param_dtype)
            mu = jnp.mean(x32, axis=-1, keepdims=True)
            var = jnp.mean(jnp.square(x32 - mu), axis=-1, keepdims=True)
            return ((x32 - mu) * jax.lax.rsqrt(var + self.eps) * scale + bias).astype(self.dtype)
        raise ValueError(f"tokeniser: model.tokeniser.norm must be 'rms' or 'layer', found {self.kind!r}")


def _activation(name: str):
    acts = {"silu": nn.silu, "gelu": nn.gelu, "relu": nn.relu}
    if name not in acts:
        raise ValueError(f"tokeniser: model.tokeniser.activation must be one of {sorted(acts)}, found {name!r}")
    return acts[name]


class ResBlock(nn.Module):
    """Pre-norm residual block at stride 1: ``h + conv(act(norm(conv(act(norm(h))))))``, causal in time."""

    kernel_size: Sequence[int]
    norm: str = "rms"
    activation: str = "silu"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, h: jax.Array, *, periodic: tuple[bool, ...]) -> jax.Array:
        """h: (B, T, *N, F) -> (B, T, *N, F)."""
        act = _activation(self.activation)
        ones = (1,) * len(self.kernel_size)
        f = h.shape[-1]
        y = act(ChannelNorm(self.norm, dtype=self.dtype, param_dtype=self.param_dtype, name="norm1")(h))
        y = FlexCausalConv(f, self.kernel_size, dtype=self.dtype, param_dtype=self.param_dtype,
                           name="conv1")(y, strides=ones, periodic=periodic)
        y = act(ChannelNorm(self.norm, dtype=self.dtype, param_dtype=self.param_dtype, name="norm2")(y))
        y = FlexCausalConv(f, self.kernel_size, dtype=self.dtype, param_dtype=self.param_dtype,
                           name="conv2")(y, strides=ones, periodic=periodic)
        return h + y


class Encoder(nn.Module):
    """Field-indexed lift, strided causal conv stages, 1x1 projection to the latent channels."""

    vocab_size: int
    widths: Sequence[int]
    latent_channels: int
    stage_kernels: Sequence[Sequence[int]]   # per stage (kt, *ks)
    res_kernel: Sequence[int]
    depth: int = 0
    norm: str = "rms"
    activation: str = "silu"
    lift_init_std: float = 0.5
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, field_ids: jax.Array, *, periodic: tuple[bool, ...], t_stride: int,
                 s_strides: Sequence[int]) -> jax.Array:
        """x: (B, T, *N, C), field_ids: (C,) -> z: (B, T // t, *(N // prod(s_strides)), L)."""
        act = _activation(self.activation)
        n_sp = x.ndim - 3
        w0 = self.widths[0]
        # lift_init_std 0.5: with a few unit-variance channels the lifted features start at about unit variance.
        table = self.param("lift_table",
                           nn.with_logical_partitioning(nn.initializers.normal(self.lift_init_std), ("vocab", "embed")),
                           (self.vocab_size, w0), self.param_dtype)
        bias = self.param("lift_bias", nn.with_logical_partitioning(nn.initializers.zeros_init(), ("embed",)),
                          (w0,), self.param_dtype)
        w = jnp.take(table, field_ids, axis=0).astype(self.dtype)            # (C, w0)
        h = jnp.einsum("...c,cf->...f", x.astype(self.dtype), w) + bias.astype(self.dtype)   # (B, T, *N, w0)
        for i, width in enumerate(self.widths):
            strides = (t_stride if i == 0 else 1, *(s_strides[i],) * n_sp)
            h = FlexCausalConv(width, self.stage_kernels[i], dtype=self.dtype, param_dtype=self.param_dtype,
                               name=f"down{i}")(h, strides=strides, periodic=periodic)
            h = act(ChannelNorm(self.norm, dtype=self.dtype, param_dtype=self.param_dtype, name=f"norm{i}")(h))
            for d in range(self.depth):
                h = ResBlock(self.res_kernel, self.norm, self.activation, dtype=self.dtype,
                             param_dtype=self.param_dtype, name=f"res{i}_{d}")(h, periodic=periodic)
        z = FlexCausalConv(self.latent_channels, (1,) * (1 + n_sp), dtype=self.dtype, param_dtype=self.param_dtype,
                           name="to_latent")(h, strides=(1,) * (1 + n_sp), periodic=periodic)
        return z                                                              # (B, T', *n, L)


class Decoder(nn.Module):
    """1x1 projection from the latent, transposed causal conv stages (mirror of the encoder), field-indexed head."""

    vocab_size: int
    widths: Sequence[int]
    stage_kernels: Sequence[Sequence[int]]
    res_kernel: Sequence[int]
    depth: int = 0
    norm: str = "rms"
    activation: str = "silu"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, z: jax.Array, field_ids: jax.Array, *, periodic: tuple[bool, ...], t_stride: int,
                 s_strides: Sequence[int]) -> jax.Array:
        """z: (B, T', *n, L), field_ids: (C,) -> (B, T' * t, *(n * prod(s_strides)), C)."""
        act = _activation(self.activation)
        n_sp = z.ndim - 3
        n = len(self.widths)
        h = FlexCausalConv(self.widths[-1], (1,) * (1 + n_sp), dtype=self.dtype, param_dtype=self.param_dtype,
                           name="from_latent")(z, strides=(1,) * (1 + n_sp), periodic=periodic)
        for i in reversed(range(n)):
            h = act(ChannelNorm(self.norm, dtype=self.dtype, param_dtype=self.param_dtype, name=f"norm{i}")(h))
            for d in range(self.depth):
                h = ResBlock(self.res_kernel, self.norm, self.activation, dtype=self.dtype,
                             param_dtype=self.param_dtype, name=f"res{i}_{d}")(h, periodic=periodic)
            out = self.widths[i - 1] if i > 0 else self.widths[0]
            strides = (t_stride if i == 0 else 1, *(s_strides[i],) * n_sp)
            h = FlexCausalConvTranspose(out, self.stage_kernels[i], dtype=self.dtype, param_dtype=self.param_dtype,
                                        name=f"up{i}")(h, strides=strides, periodic=periodic)
        h = act(ChannelNorm(self.norm, dtype=self.dtype, param_dtype=self.param_dtype, name="norm_out")(h))
        w0 = self.widths[0]
        table = self.param("head_table",
                           nn.with_logical_partitioning(nn.initializers.normal(1.0 / math.sqrt(w0)), ("vocab", "embed")),
                           (self.vocab_size, w0), self.param_dtype)
        bias = self.param("head_bias", nn.with_logical_partitioning(nn.initializers.zeros_init(), ("vocab",)),
                          (self.vocab_size,), self.param_dtype)
        w = jnp.take(table, field_ids, axis=0).astype(self.dtype)            # (C, w0)
        b = jnp.take(bias, field_ids, axis=0).astype(self.dtype)             # (C,)
        return jnp.einsum("...f,cf->...c", h, w) + b                          # (B, T, *N, C)


# ----------------------------------------------------------------------------------------------------------------
# Tokeniser
# ----------------------------------------------------------------------------------------------------------------

class Tokeniser(nn.Module):
    """Causal spatiotemporal conv autoencoder; one parameter set for every allowed ``compression=(t, s)``.

    Attributes:
      vocab_size: rows of the field-indexed lift/head tables (global field vocabulary capacity).
      widths: channels of the downsampling stages (one stage per entry; the spatial factor is split over them).
      latent_channels: L, channels of the latent.
      spatial_factors: allowed total spatial strides s (per axis).
      temporal_factors: allowed time strides t.
      n_spatial_dims: 2 or 3.
      kernel_t: time kernel of the strided and transposed convs; must be >= max(temporal_factors).
      res_kernel_t: time kernel of the residual blocks' convs; None -> ``kernel_t``. 1 makes them spatial-only:
        half their cost, and the decoder's time receptive field (``decoder_context``) stays short.
      kernel_s: spatial kernel per stage (int for all, or one per stage); None -> the largest stride that stage
        uses over ``spatial_factors`` (Walrus: kernel == max stride), at least 2. Must be >= that stride.
      depth: residual blocks per stage (stride 1, spatial kernel 3), in both encoder and decoder.
      decoder_depth: residual blocks per decoder stage; None -> ``depth``. A deeper decoder than encoder
        (``depth=0, decoder_depth=1``) bought about the reconstruction gain of ``depth=1`` on the default Euler
        data for less cost; with ``res_kernel_t=1`` it also keeps ``decoder_context`` (what stage two decodes)
        short.
      norm: "rms" or "layer" (over channels); activation: "silu", "gelu" or "relu".
    """

    vocab_size: int = 96
    widths: Sequence[int] = (32, 64)
    latent_channels: int = 16
    spatial_factors: Sequence[int] = (4, 8, 16)
    temporal_factors: Sequence[int] = (1, 2)
    n_spatial_dims: int = 2
    kernel_t: int = 2
    res_kernel_t: int | None = None
    kernel_s: int | Sequence[int] | None = None
    depth: int = 0
    decoder_depth: int | None = None
    norm: str = "rms"
    activation: str = "silu"
    lift_init_std: float = 0.5
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    # -------------------------------------------------------------------------------------------- static config
    def stage_strides(self, s: int) -> tuple[int, ...]:
        """Per-stage spatial strides for total factor ``s``."""
        return split_spatial_factor(s, len(self.widths))

    def stage_kernel_sizes(self) -> tuple[int, ...]:
        """Spatial kernel size of each stage, validated against the largest stride the stage uses."""
        n = len(self.widths)
        max_s = [max(self.stage_strides(s)[i] for s in self.spatial_factors) for i in range(n)]
        if self.kernel_s is None:
            ks = tuple(max(m, 2) for m in max_s)
        elif np.ndim(self.kernel_s) == 0:
            ks = (int(self.kernel_s),) * n
        else:
            ks = tuple(int(k) for k in self.kernel_s)
            if len(ks) != n:
                raise ValueError(f"tokeniser: model.tokeniser.kernel_s must be an int or have one entry per stage "
                                 f"(len(widths)={n}), found {self.kernel_s}")
        for i, (k, m) in enumerate(zip(ks, max_s)):
            if k < m:
                raise ValueError(f"tokeniser: model.tokeniser.kernel_s stage {i} is {k} but spatial_factors "
                                 f"{tuple(self.spatial_factors)} need stride {m} there; kernel must be >= stride")
        return ks

    def _validate_config(self) -> None:
        if self.n_spatial_dims not in (1, 2, 3):
            raise ValueError(f"tokeniser: model.tokeniser.n_spatial_dims must be 1, 2 or 3, found {self.n_spatial_dims}")
        if not self.widths:
            raise ValueError("tokeniser: model.tokeniser.widths must have at least one stage")
        if not self.spatial_factors or any(int(s) < 1 for s in self.spatial_factors):
            raise ValueError(f"tokeniser: model.tokeniser.spatial_factors must be positive ints, "
                             f"found {tuple(self.spatial_factors)}")
        if not self.temporal_factors or any(int(t) < 1 for t in self.temporal_factors):
            raise ValueError(f"tokeniser: model.tokeniser.temporal_factors must be positive ints, "
                             f"found {tuple(self.temporal_factors)}")
        for key, v, lo in (("depth", self.depth, 0), ("decoder_depth", self.decoder_depth, 0),
                           ("res_kernel_t", self.res_kernel_t, 1)):
            if v is not None and int(v) < lo:
                raise ValueError(f"tokeniser: model.tokeniser.{key} must be >= {lo}, found {v}")
        if self.kernel_t < max(self.temporal_factors):
            raise ValueError(f"tokeniser: model.tokeniser.kernel_t={self.kernel_t} must be >= max(temporal_factors)"
                             f"={max(self.temporal_factors)} (kernel >= stride)")

    def setup(self):
        self._validate_config()
        ks = self.stage_kernel_sizes()
        d = self.n_spatial_dims
        stage_kernels = tuple((self.kernel_t, *(k,) * d) for k in ks)
        res_kernel = (self._res_kt(), *(3,) * d)
        common = dict(widths=tuple(self.widths), stage_kernels=stage_kernels, res_kernel=res_kernel,
                      norm=self.norm, activation=self.activation, dtype=self.dtype, param_dtype=self.param_dtype)
        dec_depth = self._decoder_depth()
        self.encoder = Encoder(vocab_size=self.vocab_size, latent_channels=self.latent_channels,
                               lift_init_std=self.lift_init_std, depth=self.depth, **common)
        self.decoder = Decoder(vocab_size=self.vocab_size, depth=dec_depth, **common)

    def _res_kt(self) -> int:
        return int(self.kernel_t if self.res_kernel_t is None else self.res_kernel_t)

    def _decoder_depth(self) -> int:
        return int(self.depth if self.decoder_depth is None else self.decoder_depth)

    def decoder_context(self, compression: tuple[int, int]) -> int:
        """Latent frames that determine the last decoded block: ``decode(z)[:, -t:]`` equals
        ``decode(z[:, -k:])[:, -t:]`` for ``k = decoder_context((t, s))`` and any longer ``z``.

        Every decoder conv is causal in time and its left padding replicates the first frame, so padding only
        reaches outputs within a receptive field of the sequence start. At latent rate each conv with time kernel
        ``k`` looks ``k - 1`` frames back (residual blocks: two convs each; the transposed convs of stages >= 1);
        the last transposed conv (time stride ``t``, kernel ``kernel_t``) looks ``(kernel_t - 1) // t`` more.
        Static (a Python int): stage two decodes only this suffix of the latent sequence.
        """
        t = int(compression[0])
        n = len(self.widths)
        back = n * self._decoder_depth() * 2 * (self._res_kt() - 1) + (n - 1) * (self.kernel_t - 1)
        return 1 + back + (self.kernel_t - 1) // t

    # -------------------------------------------------------------------------------------------- checks
    def _strides(self, compression) -> tuple[int, tuple[int, ...]]:
        try:
            t, s = (int(c) for c in compression)
        except (TypeError, ValueError):
            raise ValueError(f"tokeniser: compression must be a static pair (t, s) of ints, found {compression!r}")
        if t not in tuple(self.temporal_factors):
            raise ValueError(f"tokeniser: temporal compression t={t} is not in model.tokeniser.temporal_factors="
                             f"{tuple(self.temporal_factors)}")
        if s not in tuple(self.spatial_factors):
            raise ValueError(f"tokeniser: spatial compression s={s} is not in model.tokeniser.spatial_factors="
                             f"{tuple(self.spatial_factors)}")
        return t, self.stage_strides(s)

    def _check_input(self, name: str, x: jax.Array, field_ids: jax.Array, periodic) -> tuple[bool, ...]:
        d = self.n_spatial_dims
        if x.ndim != d + 3:
            raise ValueError(f"tokeniser.{name}: expected (B, T, *N, C) with {d} spatial dims "
                             f"(model.tokeniser.n_spatial_dims={d}), found shape {x.shape}")
        if field_ids.shape != (x.shape[-1],) and name != "decode":
            raise ValueError(f"tokeniser.{name}: field_ids must be (C,) = ({x.shape[-1]},), found {field_ids.shape}")
        if field_ids.ndim != 1:
            raise ValueError(f"tokeniser.{name}: field_ids must be (C,), found shape {field_ids.shape}")
        if not isinstance(field_ids, jax.core.Tracer):
            ids = np.asarray(field_ids)
            if ids.size and (ids.min() < 0 or ids.max() >= self.vocab_size):
                raise ValueError(f"tokeniser.{name}: field_ids must lie in [0, model.tokeniser.vocab_size="
                                 f"{self.vocab_size}), found {ids.tolist()}")
        return _check_periodic(periodic, d)

    # -------------------------------------------------------------------------------------------- API
    def encode(self, x: jax.Array, field_ids: jax.Array, *, periodic: Sequence[bool],
               compression: tuple[int, int]) -> jax.Array:
        """x: (B, T, *N, C), field_ids: (C,) -> z: (B, T // t, *(N // s), L). T % t == 0 and N % s == 0."""
        periodic = self._check_input("encode", x, field_ids, periodic)
        t, s_strides = self._strides(compression)
        s = math.prod(s_strides)
        if x.shape[1] % t or any(n % s for n in x.shape[2:-1]):
            raise ValueError(f"tokeniser.encode: input {x.shape} needs T a multiple of t={t} and every spatial "
                             f"size a multiple of s={s} (compression={tuple(compression)})")
        return self.encoder(x, field_ids, periodic=periodic, t_stride=t, s_strides=s_strides)

    def decode(self, z: jax.Array, field_ids: jax.Array, *, periodic: Sequence[bool],
               compression: tuple[int, int]) -> jax.Array:
        """z: (B, T', *n, L), field_ids: (C,) -> (B, T' * t, *(n * s), C)."""
        periodic = self._check_input("decode", z, field_ids, periodic)
        if z.shape[-1] != self.latent_channels:
            raise ValueError(f"tokeniser.decode: latent must have model.tokeniser.latent_channels="
                             f"{self.latent_channels} channels, found shape {z.shape}")
        t, s_strides = self._strides(compression)
        return self.decoder(z, field_ids, periodic=periodic, t_stride=t, s_strides=s_strides)

    def __call__(self, x: jax.Array, field_ids: jax.Array, *, periodic: Sequence[bool],
                 compression: tuple[int, int]) -> jax.Array:
        """Reconstruction decode(encode(x)): (B, T, *N, C) -> (B, T, *N, C)."""
        z = self.encode(x, field_ids, periodic=periodic, compression=compression)
        return self.decode(z, field_ids, periodic=periodic, compression=compression)
