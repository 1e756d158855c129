"""Start a run's backbone from a state dict (``TrainConfig.pretrained_backbone``).

The file is read and matched against the network's abstract variables before anything is
initialised, so a file whose names or shapes do not fit stops the run before training, with
the error of :func:`ife_jax.nn.pretrained.load_state_dict` listing every misfit.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping

import jax
import jax.numpy as jnp

from ife_jax.nn.pretrained import load_resnet_state_dict, read_state_dict
from ife_jax.nn.res2net import load_res2net_state_dict
from ife_jax.train.config import PRETRAINED_BACKBONES, TrainConfig
from ife_jax.train.models import build_model

#: Loader of each network's backbone; the backbone sits under ``backbone`` in both.
_LOADERS = {"deeplabv3plus": load_resnet_state_dict, "sinetv2": load_res2net_state_dict}
assert set(_LOADERS) == set(PRETRAINED_BACKBONES)
_PREFIX = "backbone"


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def record_pretrained_backbone(config: TrainConfig) -> TrainConfig:
    """``config`` with the SHA-256 of its ``pretrained_backbone`` file filled in.

    Raises:
      FileNotFoundError: the file does not exist.
      ValueError: ``config`` already records another SHA-256 (the file changed).
    """
    path = config.pretrained_backbone
    if path is None:
        return config
    if not os.path.isfile(path):
        raise FileNotFoundError(f"pretrained_backbone {path!r}: no such file")
    sha = file_sha256(path)
    if config.pretrained_backbone_sha256 not in (None, sha):
        raise ValueError(
            f"pretrained_backbone {path!r} has SHA-256 {sha}, but the configuration records "
            f"{config.pretrained_backbone_sha256}: the file changed"
        )
    return config.replace(pretrained_backbone_sha256=sha)


def load_backbone(config: TrainConfig, image_shape: tuple[int, ...]) -> dict | None:
    """The backbone variables of ``config.pretrained_backbone``, shaped as the network's.

    Only shapes are traced (``jax.eval_shape``), so this is cheap and runs before anything is
    initialised or written.

    Args:
      config: the run's configuration (``model`` one of :data:`PRETRAINED_BACKBONES`).
      image_shape: (B, H, W, C) the network is traced with.

    Returns:
      ``{"params": backbone, "batch_stats": backbone}`` as NumPy arrays of the network's
      dtypes, or None when the config names no file.

    Raises:
      ValueError: naming the file and listing every missing name, unexpected name and shape
        mismatch.
    """
    if config.pretrained_backbone is None:
        return None
    model = build_model(config)
    images = jax.ShapeDtypeStruct(tuple(image_shape), jnp.float32)
    abstract = jax.eval_shape(lambda x: model.init(jax.random.key(0), x), images)
    state_dict = read_state_dict(config.pretrained_backbone)
    try:
        loaded = _LOADERS[config.model](abstract, state_dict, prefix=(_PREFIX,))
    except ValueError as err:
        raise ValueError(f"pretrained_backbone {config.pretrained_backbone!r}: {err}") from None
    return {c: loaded[c][_PREFIX] for c in ("params", "batch_stats")}


def with_backbone(state, backbone: Mapping, shardings):
    """The train state with its backbone variables replaced by ``backbone``, placed as
    ``shardings`` (the optimiser state is untouched: it starts at zero either way)."""
    params = dict(state.params)
    stats = dict(state.batch_stats)
    params[_PREFIX] = backbone["params"]
    stats[_PREFIX] = backbone["batch_stats"]
    new = state.replace(params=params, batch_stats=stats)
    return jax.device_put(new, shardings)
