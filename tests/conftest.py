import os

# Keras reads its backend once, at import: choose JAX unless the caller chose another.
os.environ.setdefault("KERAS_BACKEND", "jax")
