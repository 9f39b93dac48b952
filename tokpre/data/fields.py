"""The global field vocabulary: one integer id per flattened field-component name.

Every system shares one numbering, so a tokeniser's field-indexed first and last layers (one weight slice per
vocabulary entry) can be trained on one physical system and loaded for another. Known names come first in a
fixed order that never changes (append only); names tokpre has never seen are appended in order of first use
and recorded with the run (``FieldVocab.to_json``) so a restored run maps them back by name.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence

import numpy as np

# Component names of The Well's catalogue (the_well.md section 2), flattened the way the reader names them.
# APPEND ONLY: an id is the index in this tuple, and checkpoints depend on it.
KNOWN_FIELDS: tuple[str, ...] = (
    # euler_multi_quadrants
    "energy", "density", "pressure", "momentum_x", "momentum_y", "momentum_z",
    # shear_flow, rayleigh_benard, turbulent_radiative_layer, ...
    "tracer", "buoyancy", "velocity_x", "velocity_y", "velocity_z",
    # gray_scott_reaction_diffusion
    "A", "B",
    # active_matter
    "concentration", "D_xx", "D_xy", "D_yx", "D_yy", "E_xx", "E_xy", "E_yx", "E_yy",
    # planetswe
    "height", "velocity_theta", "velocity_phi",
    # MHD
    "magnetic_field_x", "magnetic_field_y", "magnetic_field_z",
    # acoustic_scattering (speed_of_sound is a constant field)
    "speed_of_sound",
    # viscoelastic_instability
    "c_zz", "C_xx", "C_xy", "C_yx", "C_yy",
    # helmholtz_staircase
    "pressure_re", "pressure_im", "mask",
    # post_neutron_star_merger
    "internal_energy", "temperature", "electron_fraction", "entropy",
    "magnetic_field_log_r", "magnetic_field_theta", "magnetic_field_phi",
    "velocity_log_r",
    # convective_envelope_rsg
    "velocity_r",
)

#: Default number of rows in a tokeniser's field-indexed layers: room for the known names and unseen ones.
DEFAULT_VOCAB_SIZE = 96


class FieldVocab:
    """Maps field-component names to stable integer ids.

    >>> v = FieldVocab()
    >>> v.ids(["energy", "density"]).tolist()
    [0, 1]
    """

    def __init__(self, names: Iterable[str] = KNOWN_FIELDS):
        self._names: list[str] = []
        self._index: dict[str, int] = {}
        for n in names:
            self.id(n)

    @property
    def names(self) -> list[str]:
        return list(self._names)

    def __len__(self) -> int:
        return len(self._names)

    def __contains__(self, name: str) -> bool:
        return name in self._index

    def id(self, name: str) -> int:
        """Id of ``name``; an unseen name is appended and gets the next free id."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"field name must be a non-empty string, got {name!r}")
        if name not in self._index:
            self._index[name] = len(self._names)
            self._names.append(name)
        return self._index[name]

    def ids(self, names: Sequence[str], capacity: int | None = None) -> np.ndarray:
        """Ids of ``names`` as int32 ``(C,)``; raises if an id does not fit a model with ``capacity`` rows."""
        out = np.asarray([self.id(n) for n in names], dtype=np.int32)
        if capacity is not None and out.size and int(out.max()) >= capacity:
            over = [n for n, i in zip(names, out) if i >= capacity]
            raise ValueError(
                f"field ids of {over} exceed the model's vocabulary size {capacity} "
                f"(config key model.vocab_size); raise it to at least {int(out.max()) + 1}")
        return out

    def to_json(self) -> str:
        return json.dumps({"names": self._names})

    @classmethod
    def from_json(cls, text: str) -> "FieldVocab":
        names = json.loads(text)["names"]
        vocab = cls(names)
        if vocab.names[: len(KNOWN_FIELDS)] != list(KNOWN_FIELDS)[: len(vocab.names)]:
            raise ValueError("stored field vocabulary does not start with tokpre's KNOWN_FIELDS; "
                             "it was written by an incompatible tokpre version")
        return vocab
