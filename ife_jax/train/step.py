"""Pure train and eval steps, jitted with explicit shardings (batch over ``data``, state
replicated) and the state donated."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from ife_jax.losses import dice_per_image, structure_loss
from ife_jax.train.sharding import batch_sharding, replicated
from ife_jax.train.state import TrainState


def _as_outputs(outputs) -> tuple[jax.Array, ...]:
    return tuple(outputs) if isinstance(outputs, (tuple, list)) else (outputs,)


def _resize_masks(masks: jax.Array, like: jax.Array) -> jax.Array:
    if masks.shape[1:3] == like.shape[1:3]:
        return masks
    shape = (masks.shape[0], like.shape[1], like.shape[2], masks.shape[3])
    return jax.image.resize(masks.astype(jnp.float32), shape, method="bilinear")


def total_loss(outputs, masks: jax.Array, *, weights: Sequence[float] | None = None) -> jax.Array:
    """Sum over the model's outputs of ``structure_loss``, masks resized to each output.

    Args:
      outputs: (B, h, w, 1) logits, or a tuple of them (main first, any resolutions).
      masks: (B, H, W, 1) targets in [0, 1].
      weights: one weight per output (default 1 each).

    Returns:
      Scalar float32 loss.
    """
    outputs = _as_outputs(outputs)
    if weights is None:
        weights = (1.0,) * len(outputs)
    if len(weights) != len(outputs):
        raise ValueError(f"output_weights={tuple(weights)}: need one per output ({len(outputs)})")
    return sum(
        w * structure_loss(out, _resize_masks(masks, out))
        for w, out in zip(weights, outputs, strict=True)
    )


def make_train_step(
    model: nn.Module, tx: optax.GradientTransformation, *, base_key: jax.Array
) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
    """The pure training step ``(state, batch) -> (state, metrics)``.

    Dropout noise comes from ``fold_in(base_key, state.step)``, so a resumed run draws exactly
    what an uninterrupted one does. BatchNorm statistics are computed over the global batch.
    The key is bound as an argument, not closed over: :func:`jit_train_step` passes it to the
    program, so runs that differ only in their seed share one compiled program (a closed-over
    key would be a constant of it).

    Args:
      model: Linen module; ``apply(..., train=True)`` returns logits or a tuple of logits.
      tx: the optimiser.
      base_key: PRNG key for dropout.

    Returns:
      ``train_step(state, batch)`` with ``batch = {"image": (B,H,W,C), "mask": (B,H,W,1)}``;
      the metrics are ``loss``, ``dice`` (batch mean, main output) and ``grad_norm``.
    """

    def train_step(state: TrainState, batch: dict, base_key: jax.Array):
        key = jax.random.fold_in(base_key, state.step)
        loss_fn = training_loss(model, state, batch, key)
        (loss, (updates, main)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        new_state = apply_gradients(state, tx, grads, updates)
        metrics = {
            "loss": loss,
            "dice": jnp.mean(dice_per_image(_resize_logits(main, batch["mask"]), batch["mask"])),
            "grad_norm": optax.tree.norm(grads),
        }
        return new_state, metrics

    return BoundKey(train_step, base_key)


def training_loss(model: nn.Module, state: TrainState, batch: dict, key: jax.Array) -> Callable:
    """``loss_fn(params) -> (loss, (mutated variables, main logits))``: the training forward of
    ``model`` on ``batch`` with ``state``'s BatchNorm statistics and dropout key ``key``."""
    weights = getattr(model, "output_weights", None)

    def loss_fn(params):
        variables = {"params": params, "batch_stats": state.batch_stats}
        outputs, updates = model.apply(
            variables,
            batch["image"],
            train=True,
            rngs={"dropout": key},
            mutable=["batch_stats"],
        )
        loss = total_loss(outputs, batch["mask"], weights=weights)
        return loss, (updates, _as_outputs(outputs)[0])

    return loss_fn


def apply_gradients(
    state: TrainState, tx: optax.GradientTransformation, grads, updates: dict
) -> TrainState:
    """The state after one optimiser step with ``grads`` and the forward's mutated variables."""
    param_updates, opt_state = tx.update(grads, state.opt_state, state.params)
    return state.replace(
        step=state.step + 1,
        params=optax.apply_updates(state.params, param_updates),
        batch_stats=updates.get("batch_stats", state.batch_stats),
        opt_state=opt_state,
    )


class BoundKey:
    """``fn`` with a PRNG key bound as its last argument: ``BoundKey(fn, key)(*args)`` is
    ``fn(*args, key)``. ``lower`` and ``compile`` keep the key bound, so a jitted function, its
    lowering and its executable are all called with the remaining arguments; other attributes
    (``cost_analysis``, ``memory_analysis``, ``as_text``, ...) are those of ``fn``."""

    def __init__(self, fn: Callable, key: jax.Array):
        self.fn = fn
        self.key = key

    def __call__(self, *args):
        return self.fn(*args, self.key)

    def lower(self, *args) -> BoundKey:
        return BoundKey(self.fn.lower(*args, self.key), self.key)

    def compile(self, *args, **kwargs) -> BoundKey:
        return BoundKey(self.fn.compile(*args, **kwargs), self.key)

    def __getattr__(self, name):
        if name in ("fn", "key"):  # not yet set (e.g. while copying)
            raise AttributeError(name)
        return getattr(self.fn, name)


def _resize_logits(logits: jax.Array, masks: jax.Array) -> jax.Array:
    if logits.shape[1:3] == masks.shape[1:3]:
        return logits
    shape = (*masks.shape[:3], logits.shape[3])
    return jax.image.resize(logits.astype(jnp.float32), shape, method="bilinear")


def jit_train_step(train_step, state_sharding, mesh: Mesh):
    """``jax.jit`` with the state replicated and donated, the batch split over ``data``.

    A step from :func:`make_train_step` gets its dropout key as a (replicated) argument of
    the program; any other ``train_step(state, batch)`` is jitted as it is.
    """
    data = batch_sharding(mesh)
    batch = {"image": data, "mask": data}
    if isinstance(train_step, BoundKey):
        jitted = jax.jit(
            train_step.fn,
            in_shardings=(state_sharding, batch, replicated(mesh)),
            out_shardings=(state_sharding, replicated(mesh)),
            donate_argnums=(0,),
        )
        return BoundKey(jitted, train_step.key)
    return jax.jit(
        train_step,
        in_shardings=(state_sharding, batch),
        out_shardings=(state_sharding, replicated(mesh)),
        donate_argnums=(0,),
    )


def make_eval_step(model: nn.Module, mesh: Mesh):
    """Jitted ``(variables, images) -> probabilities`` (B, H, W, 1) float32, batch over ``data``."""

    def eval_step(variables, images):
        logits = model.apply(variables, images, train=False)
        return jax.nn.sigmoid(logits.astype(jnp.float32))

    data = batch_sharding(mesh)
    return jax.jit(eval_step, in_shardings=(replicated(mesh), data), out_shardings=data)
