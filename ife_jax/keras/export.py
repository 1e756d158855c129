"""Wrap a Flax (Linen) network of this package as a Keras 3 model (JAX backend).

:class:`FlaxModule` is a ``keras.layers.JaxLayer`` whose trainable weights are the module's
``params`` and whose non-trainable weights are its ``batch_stats``. In training mode
(``model.fit``, or ``model(x, training=True)``) the module runs with batch statistics and
dropout, and the BatchNorm running averages are written back to the non-trainable weights
after every step (momentum 0.9 per step, as in the Flax module); in inference mode
(``predict``, ``evaluate``, ``model(x)``) the stored running averages are used and nothing
changes. Only the main output is returned when a module gives several in training mode.

The layer's config stores the module's class name and its attributes, so a ``.keras`` file
reloads with ``keras.saving.load_model`` once ``ife_jax.keras`` is imported. Loading is safe
for files from others: the class must be one of :data:`NETWORKS` (looked up in that table,
never imported by name) and every attribute is type-checked against the class's field
annotations (:func:`ife_jax.typed_json.from_json`) before the module is built.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import keras

from ife_jax.nn import NNUNet, SINetV2, UNet, UNet3D
from ife_jax.nn.deeplabv3plus import DeepLabV3Plus
from ife_jax.typed_json import config_fields, from_json

_PACKAGE = "ife_jax"


def _class_path(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


#: The only classes a model file may name: the segmentation networks of ``ife_jax.nn``.
NETWORKS: dict[str, type[nn.Module]] = {
    _class_path(cls): cls for cls in (UNet, UNet3D, DeepLabV3Plus, SINetV2, NNUNet)
}

#: Layer arguments a model file may not set: they hold code or weights, never configuration.
_FORBIDDEN_LAYER_KEYS = ("call_fn", "init_fn", "params", "state", "variables")


def _rbg_key(seed: jax.Array) -> jax.Array:
    """A fast-compiling ``rbg`` PRNG key from Keras' uint32[2] seed.

    Keras hands JAX layers raw threefry seeds; generating the initial weights of a large
    network from them compiles very slowly on CPU, so the seed is re-wrapped as an ``rbg`` key.
    """
    data = jnp.asarray(seed).astype(jnp.uint32).reshape(-1)[:2]
    data = jnp.concatenate([data, data ^ jnp.uint32(0x9E3779B9)])
    return jax.random.wrap_key_data(data, impl="rbg")


def _encode(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_encode(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _encode(v) for k, v in value.items()}
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _encode({f.name: getattr(value, f.name) for f in dataclasses.fields(value)})
    try:
        return {"__dtype__": jnp.dtype(value).name}
    except TypeError as err:
        raise ValueError(f"cannot serialise the module attribute value {value!r}.") from err


def module_to_config(module: nn.Module) -> dict:
    """``{"class_name": "pkg.mod.Class", "config": {attribute: JSON value}}`` of a network.

    Raises:
      ValueError: if the module is not one of :data:`NETWORKS` (it could not be reloaded).
    """
    path = _class_path(type(module))
    if NETWORKS.get(path) is not type(module):
        raise ValueError(
            f"only the networks {sorted(NETWORKS)} can be saved in a model file; got {path!r}."
        )
    config = {name: _encode(getattr(module, name)) for name in config_fields(type(module))}
    return {"class_name": path, "config": config}


def module_from_config(spec: Mapping, *, where: str = "model file") -> nn.Module:
    """Rebuilds a network from :func:`module_to_config`'s output.

    The class is looked up in :data:`NETWORKS` (nothing is imported or called by a name read
    from ``spec``) and every attribute is type-checked against the class's annotations.

    Raises:
      ValueError: naming ``where`` and the offending class name, field or value.
    """
    if not isinstance(spec, Mapping) or set(spec) != {"class_name", "config"}:
        shown = sorted(spec) if isinstance(spec, Mapping) else type(spec).__name__
        raise ValueError(
            f"{where}: a module spec has exactly the keys 'class_name' and 'config'; got {shown}."
        )
    path = spec["class_name"]
    cls = NETWORKS.get(path) if isinstance(path, str) else None
    if cls is None:
        raise ValueError(
            f"{where}: {path!r} is not a network this package can load; allowed: "
            f"{', '.join(sorted(NETWORKS))}."
        )
    return from_json(cls, spec["config"], where=f"{where}: {cls.__name__}")


@keras.saving.register_keras_serializable(package=_PACKAGE)
class FlaxModule(keras.layers.JaxLayer):
    """A Flax network of this package as a Keras layer (JAX backend only).

    Args:
      module: a flax.linen module whose ``__call__(x, train=False)`` returns logits (any
        ``ife_jax.nn`` network), or its :func:`module_to_config` dict.
      variables: optional ``{"params": ..., "batch_stats": ...}`` to start from (e.g. loaded
        pretrained weights); by default the layer initialises them when it is built.
      **kwargs: passed to ``keras.layers.Layer`` (``name``, ``seed`` ...).
    """

    def __init__(self, module, variables=None, **kwargs):
        if keras.backend.backend() != "jax":
            raise ValueError(
                "FlaxModule needs the JAX backend of Keras: set KERAS_BACKEND=jax before "
                f"importing keras (current backend: {keras.backend.backend()!r})."
            )
        if isinstance(module, Mapping):
            module = module_from_config(module)
        self.module = module
        params = state = None
        if variables is not None:
            params = {"params": variables["params"]}
            state = {k: v for k, v in variables.items() if k == "batch_stats"}
        super().__init__(
            call_fn=self._call_fn, init_fn=self._init_fn, params=params, state=state, **kwargs
        )

    def _init_fn(self, rng, inputs):
        variables = self.module.init(
            {"params": _rbg_key(rng["params"]), "dropout": _rbg_key(rng["dropout"])},
            inputs,
            train=False,
        )
        params = {"params": variables["params"]}
        state = {"batch_stats": variables["batch_stats"]} if "batch_stats" in variables else {}
        return params, state

    def _call_fn(self, params, state, rng, inputs, training):
        variables = {**params, **state}
        if not training:
            return self.module.apply(variables, inputs, train=False), state
        out, updates = self.module.apply(
            variables,
            inputs,
            train=True,
            rngs={"dropout": _rbg_key(rng["dropout"])},
            mutable=list(state),
        )
        if isinstance(out, tuple | list):
            out = out[0]
        return out, {**state, **updates}

    def _initialize_weights(self, input_shape):
        # JaxLayer's version asks TensorFlow whether it runs inside a tf.function; on the JAX
        # backend TensorFlow need not be installed, so initialise directly (jitted: one compile).
        inputs = jnp.ones([d if d is not None else 1 for d in input_shape], jnp.float32)
        params, state = jax.jit(self._init_fn)(self._get_init_rng(), inputs)
        self.tracked_params = self._create_variables(params, trainable=True)
        self.tracked_state = self._create_variables(state, trainable=False)

    def _get_init_rng(self):
        return {"params": self._get_init_seed(), "dropout": self._get_init_seed()}

    def _get_call_rng(self, training):
        return {"dropout": self._get_call_seed()} if training else {}

    def compute_output_shape(self, input_shape):
        num_classes = getattr(self.module, "num_classes", None)
        if num_classes is None:
            raise NotImplementedError("the wrapped module has no `num_classes` attribute.")
        return (*input_shape[:-1], num_classes)

    def get_config(self):
        config = super().get_config()
        for key in ("call_fn", "init_fn", "native_serialization_platforms"):
            config.pop(key, None)
        config["module"] = module_to_config(self.module)
        return config

    @classmethod
    def from_config(cls, config):
        forbidden = sorted(k for k in _FORBIDDEN_LAYER_KEYS if k in config)
        if forbidden:
            raise ValueError(
                f"model file: the FlaxModule config may not set {', '.join(forbidden)}."
            )
        if not isinstance(config.get("module"), Mapping):
            raise ValueError("model file: the FlaxModule config needs a 'module' spec.")
        return cls(**config)


def from_flax(
    module: nn.Module,
    input_shape: Sequence[int],
    *,
    variables: Mapping | None = None,
    name: str | None = None,
) -> keras.Model:
    """A Keras functional model ``Input(input_shape) -> FlaxModule(module)``.

    Args:
      module: an ``ife_jax.nn`` network (e.g. ``UNet(ife="entropy")``).
      input_shape: ``(H, W, C)`` of one image, or ``(D, H, W, C)`` of one volume for a 3-D
        network (``UNet3D``); the spatial sizes must be concrete (they are needed to
        initialise the weights; the model then accepts any valid size).
      variables: optional Flax variables to start from; freshly initialised otherwise.
      name: the Keras model's name.

    Returns:
      A ``keras.Model`` that trains with ``fit`` (BatchNorm statistics update
      during training), predicts in inference mode and saves/loads as ``.keras``.

    Example:
      >>> model = from_flax(UNet(ife="entropy"), (224, 224, 3))
      >>> model.compile(optimizer="adam", loss=keras.losses.BinaryCrossentropy(from_logits=True))
    """
    if len(input_shape) not in (3, 4):
        raise ValueError(
            f"input_shape must be (H, W, C) or (D, H, W, C); got {tuple(input_shape)!r}."
        )
    inputs = keras.Input(shape=tuple(input_shape), name="images")
    outputs = FlaxModule(module, variables=variables, name="flax_module")(inputs)
    return keras.Model(inputs, outputs, name=name or type(module).__name__.lower())
