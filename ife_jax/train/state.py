"""The train state and its sharded initialisation (``eval_shape`` -> shardings -> jitted init)."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct
from jax.sharding import Mesh

from ife_jax.train.config import TrainConfig
from ife_jax.train.sharding import replicated


@struct.dataclass
class TrainState:
    """What a training step reads and writes; a pytree, checkpointed as a whole.

    Attributes:
      step: () int32, optimiser steps taken.
      params: the model's ``params`` collection (float32).
      batch_stats: the model's ``batch_stats`` collection (empty dict if it has none).
      opt_state: the optimiser state.
    """

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any

    @property
    def variables(self) -> dict[str, Any]:
        """The variables ``model.apply`` takes."""
        if self.batch_stats:
            return {"params": self.params, "batch_stats": self.batch_stats}
        return {"params": self.params}


def _rate_table(config: TrainConfig, steps_per_epoch: int) -> tuple[np.ndarray, int]:
    """The float32 rates and how many steps each holds: one per step of the run (cosine) or
    one per epoch (step decay)."""
    if config.lr_schedule == "cosine":
        total = config.epochs * steps_per_epoch
        t = np.arange(total, dtype=np.float64)
        return np.float32(config.learning_rate * (1.0 + np.cos(np.pi * t / total)) / 2.0), 1
    rates = np.float32([config.epoch_learning_rate(e) for e in range(config.epochs)])
    return rates, steps_per_epoch


def learning_rate_schedule(config: TrainConfig, steps_per_epoch: int) -> optax.Schedule:
    """The rate of each optimiser step (0-based), as ``config.lr_schedule`` says.

    ``"step"`` (the reference): ``lr(step) = learning_rate * decay_factor ** (epoch //
    decay_every)`` with ``epoch = step // steps_per_epoch`` counted from 0, as the reference
    sets it at the start of each epoch. The per-epoch rates are computed in float64
    (:meth:`TrainConfig.epoch_learning_rate`) and rounded once to float32, so no error
    accumulates over decays.

    ``"cosine"``: ``lr(t) = learning_rate * (1 + cos(pi * t / T)) / 2`` for step ``t`` of the
    ``T = epochs * steps_per_epoch`` steps of the run: the full rate at the first step, half of
    it halfway, and towards 0 over the last steps (the rate of the last step is
    ``learning_rate * (1 - cos(pi / T)) / 2``).

    A step past the run's last has the last step's rate. :func:`host_learning_rate` gives the
    same rates without device work.
    """
    rates, per = _rate_table(config, steps_per_epoch)
    table = jnp.asarray(rates)

    def schedule(step):
        return table[jnp.clip(jnp.asarray(step) // per, 0, len(rates) - 1)]

    return schedule


def host_learning_rate(config: TrainConfig, steps_per_epoch: int) -> Callable[[int], float]:
    """:func:`learning_rate_schedule`'s rate of a step, read from a NumPy table: for logging,
    where a device computation would wait for the step in flight."""
    rates, per = _rate_table(config, steps_per_epoch)

    def rate(step: int) -> float:
        return float(rates[min(max(int(step) // per, 0), len(rates) - 1)])

    return rate


def make_optimizer(config: TrainConfig, steps_per_epoch: int) -> optax.GradientTransformation:
    """Adam (or SGD with momentum 0.9) with the configured learning-rate schedule, after
    global-norm clipping (the reference recipe is Adam with step decay)."""
    schedule = learning_rate_schedule(config, steps_per_epoch)
    if config.optimizer == "sgd":
        opt = optax.sgd(schedule, momentum=0.9)
    else:
        opt = optax.adam(schedule)
    if config.grad_clip_norm is None:
        return opt
    return optax.chain(optax.clip_by_global_norm(config.grad_clip_norm), opt)


def abstract_train_state(
    model: nn.Module, tx: optax.GradientTransformation, image_shape: tuple[int, ...]
):
    """The state's shapes and dtypes, and the init function that makes it from a key."""

    def init(key: jax.Array) -> TrainState:
        images = jnp.zeros(image_shape, jnp.float32)
        variables = model.init({"params": key, "dropout": key}, images, train=False)
        params = variables["params"]
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            batch_stats=variables.get("batch_stats", {}),
            opt_state=tx.init(params),
        )

    return jax.eval_shape(init, jax.random.key(0)), init


def state_shardings(abstract_state, mesh: Mesh):
    """Every leaf of the state replicated over the mesh."""
    return jax.tree.map(lambda _: replicated(mesh), abstract_state)


def create_train_state(
    model: nn.Module,
    tx: optax.GradientTransformation,
    key: jax.Array,
    *,
    image_shape: tuple[int, ...],
    mesh: Mesh,
) -> TrainState:
    """Initialises the state directly into its (replicated) shardings.

    Deprecated: the training loop initialises through :func:`abstract_train_state`,
    :func:`state_shardings` and :func:`initialize`; call those.

    Args:
      model: a Linen module following the project's call convention.
      tx: the optimiser.
      key: PRNG key for the parameters.
      image_shape: (B, H, W, C) of a dummy input used to trace ``model.init``.
      mesh: the device mesh.
    """
    warnings.warn(
        "ife_jax.train.state.create_train_state is deprecated: use abstract_train_state, "
        "state_shardings and initialize.",
        DeprecationWarning,
        stacklevel=2,
    )
    abstract, init = abstract_train_state(model, tx, image_shape)
    return initialize(init, key, state_shardings(abstract, mesh))


def initialize(init, key: jax.Array, shardings) -> TrainState:
    """Runs ``init(key)`` jitted straight into ``shardings``.

    On CPU the program is compiled without LLVM's optimisations: the random initialisers
    unroll into a program that XLA:CPU otherwise takes minutes to optimise (two minutes for
    a 5-level UNet), for a function that runs once. The random bits are integer arithmetic
    and come out the same.
    """
    jitted = jax.jit(init, out_shardings=shardings)
    if jax.default_backend() != "cpu":
        return jitted(key)
    options = {"xla_backend_optimization_level": 0}
    return jitted.lower(key).compile(compiler_options=options)(key)


def count_params(params) -> int:
    """Number of scalar parameters."""
    return int(sum(x.size for x in jax.tree.leaves(params)))
