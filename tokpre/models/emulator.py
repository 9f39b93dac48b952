"""Emulator = tokeniser (encoder/decoder) + latent processor, with a parameter tree the AE warm start drops into.

Parameter tree: ``{'tokeniser': {'encoder': ..., 'decoder': ...}, 'processor': ...}``, so stage two's warm start is
``params['tokeniser'] = restored_ae_params`` (a ``Tokeniser(...).init(...)['params']`` tree has the same structure
and shapes).

One step, ``compression=(t, s)`` static:

    x_in (B, Ti, *N, C) --encode--> z (B, Ti/t, *n, L) --processor--> z_next (B, 1, *n, L)
    concat(z, z_next) (B, Ti/t + 1, *n, L) --decode--> (B, Ti + t, *N, C) --keep last t--> (B, t, *N, C)

Why decode latent context and not z_next alone: the tokeniser decoder is causal in time with time kernels > 1
(and residual blocks), so the frames of latent block j depend on latents < j as well. Decoding z_next alone would
left-pad it and reconstruct a different (wrong) frame block. ``decode_last`` decodes the last
``Tokeniser.decoder_context(compression)`` latents of the sequence (its time receptive field; the whole sequence
when shorter) and keeps the last t frames: exactly what the autoencoder produces for the whole latent sequence,
without decoding frames that cannot influence the prediction.

For stage two's 'frozen' mode the pieces are exposed separately: ``encode`` (cache latents once), ``process`` /
``predict_all`` (train the processor on latents), ``decode_last`` (decode a prediction for evaluation).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import flax.linen as nn

from tokpre.models.processor import Processor
from tokpre.models.tokeniser import Tokeniser


class Emulator(nn.Module):
    """Tokeniser + processor; submodules are named ``tokeniser`` and ``processor``.

    Build with ``Emulator(tokeniser=Tokeniser(...), processor=Processor(...))`` or
    ``Emulator.from_configs(tokeniser_cfg, processor_cfg)``. The processor's ``latent_channels`` must equal the
    tokeniser's.
    """

    tokeniser: Tokeniser
    processor: Processor

    @classmethod
    def from_configs(cls, tokeniser_cfg: Mapping[str, Any], processor_cfg: Mapping[str, Any]) -> "Emulator":
        """Build from keyword dicts (e.g. ``config.model.tokeniser`` / ``config.model.processor``).

        ``latent_channels`` missing from ``processor_cfg`` is taken from the tokeniser.
        """
        tok = Tokeniser(**dict(tokeniser_cfg))
        pcfg = dict(processor_cfg)
        pcfg.setdefault("latent_channels", tok.latent_channels)
        return cls(tokeniser=tok, processor=Processor(**pcfg))

    def _check(self) -> None:
        if self.tokeniser.latent_channels != self.processor.latent_channels:
            raise ValueError(
                "emulator.py: config.model.processor.latent_channels="
                f"{self.processor.latent_channels} must equal config.model.tokeniser.latent_channels="
                f"{self.tokeniser.latent_channels}"
            )

    def encode(self, x: jax.Array, field_ids: jax.Array, *, periodic: Sequence[bool],
               compression: tuple[int, int]) -> jax.Array:
        """x: (B, T, *N, C), field_ids: (C,) -> z: (B, T // t, *(N // s), L)."""
        return self.tokeniser.encode(x, field_ids, periodic=periodic, compression=compression)

    def decode(self, z: jax.Array, field_ids: jax.Array, *, periodic: Sequence[bool],
               compression: tuple[int, int]) -> jax.Array:
        """z: (B, T', *n, L), field_ids: (C,) -> (B, T' * t, *(n * s), C)."""
        return self.tokeniser.decode(z, field_ids, periodic=periodic, compression=compression)

    def process(self, z: jax.Array, *, deterministic: bool = True) -> jax.Array:
        """Next latent frame: z (B, T', *n, L) -> (B, 1, *n, L)."""
        self._check()
        return self.processor(z, deterministic=deterministic)

    def predict_all(self, z: jax.Array, *, deterministic: bool = True) -> jax.Array:
        """Teacher-forced next-latent predictions: z (B, T', *n, L) -> (B, T', *n, L); position i predicts i + 1."""
        self._check()
        return self.processor.predict_all(z, deterministic=deterministic)

    def decode_last(self, z_seq: jax.Array, field_ids: jax.Array, *, periodic: Sequence[bool],
                    compression: tuple[int, int]) -> jax.Array:
        """Frames of the last latent block: z_seq (B, T'+1, *n, L) -> (B, t, *(n * s), C).

        ``z_seq`` is the latent context with the prediction appended; its last ``decoder_context`` latents are
        decoded because the causal decoder uses past latents (see the module docstring).
        """
        t = int(compression[0])
        k = self.tokeniser.decoder_context(compression)
        return self.decode(z_seq[:, -k:], field_ids, periodic=periodic, compression=compression)[:, -t:]

    def __call__(self, x_in: jax.Array, field_ids: jax.Array, *, periodic: Sequence[bool],
                 compression: tuple[int, int], deterministic: bool = True) -> jax.Array:
        """Next frames: x_in (B, Ti, *N, C) (Ti a multiple of t), field_ids (C,) -> (B, t, *N, C)."""
        t = int(compression[0])
        if x_in.shape[1] % t:
            raise ValueError(
                f"emulator.py: input window Ti={x_in.shape[1]} (x_in {x_in.shape}) must be a multiple of the "
                f"temporal compression t={t}; set data n_steps_input accordingly"
            )
        z = self.encode(x_in, field_ids, periodic=periodic, compression=compression)   # (B, Ti/t, *n, L)
        z_next = self.process(z, deterministic=deterministic)                           # (B, 1, *n, L)
        z_seq = jnp.concatenate([z.astype(z_next.dtype), z_next], axis=1)               # (B, Ti/t + 1, *n, L)
        return self.decode_last(z_seq, field_ids, periodic=periodic, compression=compression)
