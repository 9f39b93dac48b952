"""tokpre: tokeniser pretraining for physics foundation models (JAX/Flax)."""

__version__ = "0.1.0"
