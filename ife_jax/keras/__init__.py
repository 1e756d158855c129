"""Keras 3 front end: the IFE layer, the UNet, the structure loss, the Dice metric, and Flax
networks of this package as Keras models.

Importing this package imports Keras, whose backend is chosen by ``KERAS_BACKEND`` or
``~/.keras/keras.json``; a backend that is not installed gives an ``ImportError`` saying how to
choose JAX. ``IFELayer``, ``unet``, ``StructureLoss`` and ``Dice`` run
on every Keras backend (JAX through the pure functions of ``ife_jax``, TensorFlow and PyTorch
through ``keras.ops``); ``from_flax`` needs the JAX backend.
"""

from ife_jax._extras import missing_extra

try:
    import keras
except ModuleNotFoundError as err:  # Keras, or the backend named by KERAS_BACKEND or keras.json
    if err.name == "keras":
        raise missing_extra(err, "keras") from None
    if err.name not in ("tensorflow", "torch", "jax"):
        raise
    raise ImportError(
        f"Keras is set to the {err.name!r} backend (by KERAS_BACKEND, else the 'backend' entry "
        f"of ~/.keras/keras.json), but {err.name} is not installed. To use JAX, run "
        "os.environ['KERAS_BACKEND'] = 'jax' before the first `import keras`, or set "
        "KERAS_BACKEND=jax in the shell."
    ) from err

from ife_jax.keras.layers import IFELayer
from ife_jax.keras.losses import Dice, StructureLoss
from ife_jax.keras.models import load_flax_unet_weights, unet

if keras.backend.backend() == "jax":
    # Wrapping Flax modules needs the JAX backend; importing it registers FlaxModule so that
    # saved models reload.
    from ife_jax.keras.export import FlaxModule as FlaxModule
    from ife_jax.keras.export import from_flax
else:

    def from_flax(*args, **kwargs):
        """Unavailable: Flax networks run as Keras models on the JAX backend only."""
        raise RuntimeError(
            f"ife_jax.keras.from_flax needs KERAS_BACKEND=jax; this process uses "
            f"{keras.backend.backend()!r}."
        )


__all__ = [
    "Dice",
    "IFELayer",
    "StructureLoss",
    "from_flax",
    "load_flax_unet_weights",
    "unet",
]
