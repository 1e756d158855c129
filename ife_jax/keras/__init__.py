"""Keras 3 front end (JAX backend): Flax networks of this package as Keras models."""

from ife_jax.keras.export import FlaxModule, from_flax

__all__ = ["FlaxModule", "from_flax"]
