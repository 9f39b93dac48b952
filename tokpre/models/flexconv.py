"""Causal space-time convolutions whose strides are chosen at call time (runtime compression).

Data layout is channel-last with time first: ``x: (B, T, *N, C)`` with ``N = (H, W)`` for 2D systems and
``(H, W, D)`` for 3D systems. A kernel has shape ``(kt, *ks, Cin, Cout)`` and is the same whatever stride a call
uses: only the strides change (Walrus' Convolutional Stride Modulation, extended here to the time axis). The
strides are static Python ints, so each (stride) combination compiles once and shares the one parameter set.

Causality (time axis)
  ``FlexCausalConv`` with time kernel ``kt`` and stride ``st`` pads ``kt - st`` frames on the LEFT only
  (replicating frame 0) and none on the right. Output frame ``j`` then reads input frames
  ``j*st - (kt - st) ... (j+1)*st - 1``: the last frame it sees is the last frame of its own block, never a later
  one, and the output has exactly ``T // st`` frames.
  ``FlexCausalConvTranspose`` maps latent frame ``j`` to output frames ``j*st + a`` for kernel taps
  ``a = 0..kt-1`` (the scatter form of a transposed convolution) and keeps output frames ``0 .. T'*st - 1``;
  block ``j`` of the output thus depends only on latent frames ``<= j``.

Spatial padding
  Per axis, from the static ``periodic`` tuple: circular (``wrap``) on periodic axes, replicate (``edge``)
  otherwise. With kernel ``k`` and stride ``s`` the conv pads ``k - s`` cells in total, ``(k - s) // 2`` before
  and the rest after, so the output has exactly ``N // s`` cells and, on periodic axes, rolling the input by a
  multiple of ``s`` rolls the output by ``shift / s``.

Implementation: both layers run in polyphase form (space-to-depth / depth-to-space around a stride-1 VALID
conv, time taps folded into channels and time into batch), which is exactly the strided / transposed conv but
never hands XLA a strided, lhs-dilated or 3-axis conv; XLA:CPU runs those up to ~100x slower, and the gradients
of a strided conv are dilated convs.

Constraint: every kernel size must be >= the stride used on that axis (otherwise input cells would be skipped and
the padding would be negative); a smaller kernel raises ``ValueError``. Sizes must be multiples of the strides.

Parameters carry logical axis names: kernel ``("conv_t", "conv_h", "conv_w"[, "conv_d"], "conv_in", "conv_out")``,
bias ``("conv_out",)``.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import flax.linen as nn
from jax import lax

Dtype = Any

_SPATIAL_AXIS_NAMES = ("conv_h", "conv_w", "conv_d")


def kernel_logical_axes(n_spatial_dims: int) -> tuple[str, ...]:
    """Logical axis names of a ``(kt, *ks, Cin, Cout)`` conv kernel for ``n_spatial_dims`` in 1..3."""
    if not 1 <= n_spatial_dims <= 3:
        raise ValueError(f"flexconv: n_spatial_dims must be 1, 2 or 3, found {n_spatial_dims}")
    return ("conv_t", *_SPATIAL_AXIS_NAMES[:n_spatial_dims], "conv_in", "conv_out")


def _dimension_numbers(n_conv_dims: int) -> lax.ConvDimensionNumbers:
    """Channel-last numbers for lhs/out ``(B, *dims, C)`` and rhs ``(*dims, Cin, Cout)``, any number of dims."""
    nd = n_conv_dims
    lhs = (0, nd + 1, *range(1, nd + 1))
    rhs = (nd + 1, nd, *range(nd))
    return lax.ConvDimensionNumbers(lhs_spec=lhs, rhs_spec=rhs, out_spec=lhs)


def _space_to_depth(x: jax.Array, factors: Sequence[int]) -> jax.Array:
    """(B, q0*f0, q1*f1, ..., C) -> (B, q0, q1, ..., f0*f1*...*C), channel order (r0, r1, ..., c)."""
    b, *sizes, c = x.shape
    nd = len(sizes)
    x = x.reshape(b, *[v for q, f in zip(sizes, factors) for v in (q // f, f)], c)
    perm = (0, *range(1, 2 * nd, 2), *range(2, 2 * nd + 1, 2), 2 * nd + 1)
    return x.transpose(perm).reshape(b, *[q // f for q, f in zip(sizes, factors)], math.prod(factors) * c)


def _depth_to_space(x: jax.Array, factors: Sequence[int]) -> jax.Array:
    """(B, q0, q1, ..., f0*f1*...*C) with channel order (r0, r1, ..., c) -> (B, q0*f0, q1*f1, ..., C)."""
    b, *sizes, fc = x.shape
    nd = len(sizes)
    c = fc // math.prod(factors)
    x = x.reshape(b, *sizes, *factors, c)
    perm = (0, *[a for i in range(nd) for a in (1 + i, 1 + nd + i)], 1 + 2 * nd)
    return x.transpose(perm).reshape(b, *[q * f for q, f in zip(sizes, factors)], c)


def _conv_time_folded(x: jax.Array, w: jax.Array, n_out_t: int) -> jax.Array:
    """Stride-1 VALID conv over (time, *space) with the time taps folded into channels and time into batch.

    x: (B, n_out_t + Mt - 1, *S, Cin); w: (Mt, *Ks, Cin, Cout) -> (B, n_out_t, *(S - Ks + 1), Cout).
    Only spatial convolutions reach XLA (2D for 2D data), which XLA:CPU runs fast and GPUs run as cuDNN 2D convs.
    """
    mt = w.shape[0]
    b = x.shape[0]
    xs = jnp.concatenate([x[:, m:m + n_out_t] for m in range(mt)], axis=-1) if mt > 1 else x[:, :n_out_t]
    xs = xs.reshape(b * n_out_t, *xs.shape[2:])                         # (B*T', *S, Mt*Cin), channels (m, c)
    nd = w.ndim - 3
    wk = jnp.moveaxis(w, 0, nd)                                          # (*Ks, Mt, Cin, Cout)
    wk = wk.reshape(*wk.shape[:nd], -1, wk.shape[-1])                    # (*Ks, Mt*Cin, Cout)
    y = lax.conv_general_dilated(xs, wk, window_strides=(1,) * nd, padding="VALID",
                                 dimension_numbers=_dimension_numbers(nd))
    return y.reshape(b, n_out_t, *y.shape[1:])


def _check_args(name: str, x: jax.Array, kernel_size: Sequence[int], strides: Sequence[int],
                periodic: Sequence[bool]) -> None:
    nd = len(kernel_size)
    if x.ndim != nd + 2:
        raise ValueError(f"flexconv.{name}: input must be (B, T, *N, C) with {nd - 1} spatial dims "
                         f"(kernel_size={tuple(kernel_size)}), found shape {x.shape}")
    if len(strides) != nd:
        raise ValueError(f"flexconv.{name}: strides must have {nd} entries (st, *ss), found {tuple(strides)}")
    if len(periodic) != nd - 1:
        raise ValueError(f"flexconv.{name}: periodic must have {nd - 1} entries (one per spatial axis), "
                         f"found {tuple(periodic)}")
    for axis, (k, s) in enumerate(zip(kernel_size, strides)):
        if not isinstance(s, int) or s < 1:
            raise ValueError(f"flexconv.{name}: strides must be positive Python ints (static), found {strides!r}")
        if k < s:
            which = "time" if axis == 0 else f"spatial axis {axis - 1}"
            raise ValueError(f"flexconv.{name}: kernel size must be >= stride on every axis; {which} has kernel "
                             f"{k} < stride {s} (kernel_size={tuple(kernel_size)}, strides={tuple(strides)})")


def _pad_axis(x: jax.Array, axis: int, lo: int, hi: int, mode: str) -> jax.Array:
    if lo == 0 and hi == 0:
        return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (lo, hi)
    return jnp.pad(x, widths, mode=mode)


class FlexCausalConv(nn.Module):
    """Causal-in-time, boundary-aware convolution with a fixed kernel and strides given per call.

    Attributes:
      features: output channels Cout.
      kernel_size: ``(kt, *ks)``, one entry for time then one per spatial axis (2 or 3 spatial axes).
      use_bias: add a learned bias ``(Cout,)``.
    """

    features: int
    kernel_size: Sequence[int]
    use_bias: bool = True
    kernel_init: Any = nn.initializers.lecun_normal()
    bias_init: Any = nn.initializers.zeros_init()
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, strides: Sequence[int], periodic: Sequence[bool]) -> jax.Array:
        """x: (B, T, *N, Cin) -> (B, T // st, *(N // ss), Cout).

        Args:
          x: input, T a multiple of ``strides[0]`` and each N_i a multiple of ``strides[1 + i]``.
          strides: static ``(st, *ss)``; every kernel size must be >= its stride.
          periodic: static, one bool per spatial axis: circular padding if True, replicate padding if False.
        """
        ks = tuple(int(k) for k in self.kernel_size)
        strides = tuple(strides)
        periodic = tuple(bool(p) for p in periodic)
        _check_args("FlexCausalConv", x, ks, strides, periodic)
        nd = len(ks)
        for axis in range(nd):
            if x.shape[1 + axis] % strides[axis]:
                raise ValueError(f"flexconv.FlexCausalConv: input axis {1 + axis} of shape {x.shape} has size "
                                 f"{x.shape[1 + axis]}, not a multiple of stride {strides[axis]}")
        cin = x.shape[-1]
        kernel = self.param("kernel",
                            nn.with_logical_partitioning(self.kernel_init, kernel_logical_axes(nd - 1)),
                            (*ks, cin, self.features), self.param_dtype)

        # Polyphase form (no strided or dilated conv reaches XLA, whose CPU backend is very slow on those):
        # pad each kernel axis at the FRONT with zero taps up to M*s (M = ceil(k/s)) and the input by as many
        # extra cells on the left; space-to-depth by the strides; stride-1 VALID conv with M taps per axis.
        # The zero taps only ever meet earlier (or padding) frames, so no future frame enters any sum.
        ms = [-(-k // s) for k, s in zip(ks, strides)]
        extra = [m * s - k for m, k, s in zip(ms, ks, strides)]
        # Time: left padding only, kt - st (+ extra) frames replicating frame 0 (causal; T // st output frames).
        x = _pad_axis(x, 1, ks[0] - strides[0] + extra[0], 0, "edge")
        # Space: k - s cells per axis split (floor before, rest after); wrap on periodic axes, edge otherwise.
        for i, (k, s, per) in enumerate(zip(ks[1:], strides[1:], periodic)):
            total = k - s
            x = _pad_axis(x, 2 + i, total // 2 + extra[1 + i], total - total // 2, "wrap" if per else "edge")

        x = _space_to_depth(x.astype(self.dtype), strides)                  # (B, T'+Mt-1, *(n+M-1), P*Cin)
        w = jnp.pad(kernel.astype(self.dtype), [(e, 0) for e in extra] + [(0, 0), (0, 0)])
        w = w.reshape(*[v for m, s in zip(ms, strides) for v in (m, s)], cin, self.features)
        w = w.transpose(*range(0, 2 * nd, 2), *range(1, 2 * nd, 2), 2 * nd, 2 * nd + 1)
        w = w.reshape(*ms, -1, self.features)                               # (*M, P*Cin), channels (r_t, r_s.., c)
        y = _conv_time_folded(x, w, x.shape[1] - ms[0] + 1)                 # (B, T', *n, Cout)
        if self.use_bias:
            bias = self.param("bias", nn.with_logical_partitioning(self.bias_init, ("conv_out",)),
                              (self.features,), self.param_dtype)
            y = y + bias.astype(self.dtype)
        return y


class FlexCausalConvTranspose(nn.Module):
    """Causal upsampling by runtime strides: a transposed convolution with a fixed kernel, stride given per call.

    Scatter form, per axis: ``y[o] = sum_j x[j] * w[o + c - j*s]`` over kernel taps ``0 <= o + c - j*s < k``,
    output length ``n * s`` exactly, with offset ``c = 0`` in time (causal: output block j reads latents <= j) and
    ``c = (k - s) // 2`` in space (centred like ``FlexCausalConv``'s padding). Latents are padded before the
    transposed conv so no output cell lacks any of its taps: edge (frame 0) on the left of time, wrap/edge in
    space per ``periodic``; periodic axes stay shift-equivariant (latent shift 1 -> output shift s).

    Why a transposed conv and not nearest-repeat + conv: the kernel taps ``w[r], w[r+s], ...`` give each
    sub-position ``r`` of an output block its own weights (what a learned upsampler needs; a repeat makes the
    sub-positions of a block near-identical), the cost scales with the coarse input rather than the fine output,
    and it is the mirror of the encoder's strided conv, as in Walrus' CSM decoder. The kernel does not depend on
    the stride: a call with stride s uses the taps at positions ``r + m*s``.

    Attributes:
      features: output channels Cout.
      kernel_size: ``(kt, *ks)``; each must be >= the stride used on that axis.
    """

    features: int
    kernel_size: Sequence[int]
    use_bias: bool = True
    kernel_init: Any = nn.initializers.lecun_normal()
    bias_init: Any = nn.initializers.zeros_init()
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, strides: Sequence[int], periodic: Sequence[bool]) -> jax.Array:
        """x: (B, T', *n, Cin) -> (B, T' * st, *(n * ss), Cout)."""
        ks = tuple(int(k) for k in self.kernel_size)
        strides = tuple(strides)
        periodic = tuple(bool(p) for p in periodic)
        _check_args("FlexCausalConvTranspose", x, ks, strides, periodic)
        nd = len(ks)
        cin = x.shape[-1]
        # Kernel stored in scatter orientation: tap a of the kernel adds x[j] * w[a] to output j*s + a (- c).
        # fan_in of a transposed conv is about Cin * prod(k / s); lecun on the full kernel is a fine default.
        kernel = self.param("kernel",
                            nn.with_logical_partitioning(self.kernel_init, kernel_logical_axes(nd - 1)),
                            (*ks, cin, self.features), self.param_dtype)

        # Polyphase form: output cell i = q*s + r of the scatter sum is  sum_m xpad[q - m] * w[m*s + r],  i.e. a
        # stride-1 conv of the padded latent per phase r (kernel padded with zero taps at the END to M*s), then
        # depth-to-space. Zero taps meet only earlier latents, so causality holds term by term.
        sizes = x.shape[1:-1]
        ms = [-(-k // s) for k, s in zip(ks, strides)]
        crops = []
        for axis, (k, s, m) in enumerate(zip(ks, strides, ms)):
            c = 0 if axis == 0 else (k - s) // 2
            lo = m - 1 - c // s            # latents needed before index 0
            hi = -(-c // s)                # and after the last one (none in time: c = 0, causal)
            mode = "edge" if axis == 0 or not periodic[axis - 1] else "wrap"
            x = _pad_axis(x, 1 + axis, lo, hi, mode)
            crops.append(c % s)

        w = jnp.pad(kernel.astype(self.dtype), [(0, m * s - k) for m, k, s in zip(ms, ks, strides)] + [(0, 0)] * 2)
        w = w.reshape(*[v for m, s in zip(ms, strides) for v in (m, s)], cin, self.features)
        w = jnp.flip(w, axis=tuple(range(0, 2 * nd, 2)))                  # correlation over the tap index m
        w = w.transpose(*range(0, 2 * nd, 2), 2 * nd, *range(1, 2 * nd, 2), 2 * nd + 1)
        w = w.reshape(*ms, cin, -1)                                         # (*M, Cin, P*Cout), out (r_t, r_s.., o)
        y = _conv_time_folded(x.astype(self.dtype), w, sizes[0])            # (B, T', *(n+..), P*Cout)
        y = _depth_to_space(y, strides)                                     # (B, T'*st, *(..*s), Cout)
        index = (slice(None), slice(None)) + tuple(slice(o, o + n * s) for o, n, s in
                                                   zip(crops[1:], sizes[1:], strides[1:])) + (slice(None),)
        y = y[index]
        if self.use_bias:
            bias = self.param("bias", nn.with_logical_partitioning(self.bias_init, ("conv_out",)),
                              (self.features,), self.param_dtype)
            y = y + bias.astype(self.dtype)
        return y
