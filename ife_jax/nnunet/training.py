"""nnU-Net's training recipe on preprocessed cases, with optional IFE.

- **Patches** (:func:`sample_batch`, host, NumPy): the last third of every batch (nnU-Net's
  ``round(B * (1 - 0.33))`` onwards) is centred on a random foreground voxel, the rest is
  placed uniformly (it may extend past the case by half a patch; outside is 0 / background).
  For ``2d`` a random slice of a random case is taken. The generator is seeded with
  ``(seed, step)``, so a resumed run draws the same batches.
- **Augmentation** on the device (:mod:`ife_jax.nnunet.augment`), ``vmap``-ed over the batch.
- **Loss**: cross-entropy + (- soft Dice of the foreground, smooth 1e-5; over the batch for
  ``2d``), summed over the deep-supervision outputs with nnU-Net's weights; targets are
  subsampled by the cumulative strides (nearest). The logged loss is therefore negative once
  the Dice term exceeds the cross-entropy, as in nnU-Net.
- **Optimiser**: SGD, Nesterov momentum 0.99, weight decay 3e-5, gradient norm clipped at 12,
  learning rate ``0.01 (1 - epoch / epochs)^0.9`` per epoch.
- **Epochs** of ``iterations`` steps (1000 x 250 by default; :data:`TINY` for smoke tests); a
  checkpoint every epoch through :class:`ife_jax.train.checkpointing.Checkpointer`, resumed
  automatically, the output folder held by :class:`ife_jax.train.workdir.WorkdirLock`; the
  batch is sharded over the devices' data axis when they divide it.
- **Splits**: ``splits_final.json`` beside the plans: 5 folds over the sorted case names,
  shuffled with seed 12345 (own shuffle, so the folds differ from nnU-Net's scikit-learn
  ones); fold ``all`` trains on every case.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ife_jax.nn.nnunet import NNUNet, deep_supervision_weights
from ife_jax.nnunet import augment as aug
from ife_jax.nnunet.plans import ConfigurationPlan
from ife_jax.nnunet.preprocessing import load_case


@dataclass(frozen=True)
class Schedule:
    """Epochs x iterations and the optimiser settings."""

    epochs: int = 1000
    iterations: int = 250
    learning_rate: float = 0.01
    momentum: float = 0.99
    weight_decay: float = 3e-5
    oversample_foreground: float = 0.33
    seed: int = 0


#: A few steps, for smoke tests.
TINY = Schedule(epochs=2, iterations=3)


def make_splits(names, *, folds: int = 5, seed: int = 12345) -> list[dict]:
    """``[{"train": [...], "val": [...]}, ...]``: ``folds`` folds of the shuffled names."""
    names = sorted(names)
    if len(names) < folds:
        return []
    order = np.random.default_rng(seed).permutation(len(names))
    parts = np.array_split(order, folds)
    return [
        {
            "train": sorted(names[i] for i in order if i not in set(p.tolist())),
            "val": sorted(names[i] for i in p),
        }
        for p in parts
    ]


def fold_cases(preprocessed: Path, names, fold: str) -> list[str]:
    """The training cases of ``fold`` (``0``-``4`` or ``all``); writes ``splits_final.json``
    the first time."""
    if fold == "all":
        return sorted(names)
    path = preprocessed / "splits_final.json"
    if path.exists():
        splits = json.loads(path.read_text())
    else:
        splits = make_splits(names)
        path.write_text(json.dumps(splits, indent=1))
    k = int(fold)
    if not 0 <= k < len(splits):
        raise ValueError(
            f"fold {fold!r}: {path} has {len(splits)} folds ({len(names)} cases; fewer than 5 "
            "cases can only be trained with fold 'all')."
        )
    return splits[k]["train"]


def _crop(x: np.ndarray, start, size, fill) -> np.ndarray:
    """``x[..., start:start+size]`` over the last len(size) axes, ``fill`` outside."""
    lead = x.shape[: x.ndim - len(size)]
    out = np.full((*lead, *size), fill, x.dtype)
    src, dst = [], []
    for s, n, full in zip(start, size, x.shape[len(lead) :], strict=True):
        lo, hi = max(s, 0), min(s + n, full)
        src.append(slice(lo, max(hi, lo)))
        dst.append(slice(lo - s, lo - s + max(hi - lo, 0)))
    out[(..., *dst)] = x[(..., *src)]
    return out


def sample_batch(cases, config: ConfigurationPlan, rng: np.random.Generator, oversample: float):
    """One training batch (module doc): images ``(B, *P, C)`` float32, labels ``(B, *P)`` int32."""
    patch = tuple(config.patch_size)
    dims = len(patch)
    images, segs = [], []
    for b in range(config.batch_size):
        data, seg, fg = cases[rng.integers(len(cases))]
        force_fg = b >= round(config.batch_size * (1 - oversample))
        if dims == 2:
            z = int(rng.integers(data.shape[1]))
            if force_fg and len(fg):
                z = int(fg[rng.integers(len(fg))][0])
            data, seg = data[:, z], seg[z]
            fg_here = np.argwhere(seg > 0)
        else:
            fg_here = fg
        shape = seg.shape
        if force_fg and len(fg_here):
            centre = fg_here[rng.integers(len(fg_here))][-dims:]
            start = [int(c) - p // 2 for c, p in zip(centre, patch, strict=True)]
        else:
            start = [
                int(rng.integers(-(p // 2), max(n - p + p // 2, -(p // 2)) + 1))
                for n, p in zip(shape, patch, strict=True)
            ]
        images.append(_crop(data, start, patch, 0.0))
        segs.append(_crop(seg, start, patch, 0))
    image = np.moveaxis(np.stack(images), 1, -1).astype(np.float32)
    return image, np.maximum(np.stack(segs), 0).astype(np.int32)


def dice_ce(logits, seg, *, batch_dice: bool, smooth: float = 1e-5):
    """nnU-Net's ``CE + (-soft Dice)`` (foreground classes) of ``(B, *S, K)`` logits."""
    k = logits.shape[-1]
    onehot = jax.nn.one_hot(seg, k)
    ce = -jnp.mean(jnp.sum(onehot * jax.nn.log_softmax(logits), -1))
    probs = jax.nn.softmax(logits)
    axes = tuple(range(0 if batch_dice else 1, logits.ndim - 1))
    tp = jnp.sum(probs * onehot, axes)
    fp = jnp.sum(probs * (1 - onehot), axes)
    fn = jnp.sum((1 - probs) * onehot, axes)
    dc = (2 * tp + smooth) / jnp.maximum(2 * tp + fp + fn + smooth, 1e-8)
    return ce - jnp.mean(dc[..., 1:])


def deep_supervision_loss(outputs, seg, config: ConfigurationPlan):
    """Weighted sum over the outputs; targets subsampled by the cumulative strides."""
    weights = deep_supervision_weights(config.num_stages, config.deep_supervision)
    total, factor = 0.0, [1] * seg.ndim
    for i, (w, out) in enumerate(zip(weights, outputs, strict=False)):
        if i:
            factor = [f * s for f, s in zip(factor, (1, *config.strides[i]), strict=True)]
        target = seg[tuple(slice(None, None, f) for f in factor)]
        total = total + w * dice_ce(out, target, batch_dice=config.batch_dice)
    return total


def make_optimizer(schedule: Schedule) -> optax.GradientTransformation:
    def lr(step):
        epoch = jnp.minimum(step // schedule.iterations, schedule.epochs - 1)
        return schedule.learning_rate * (1 - epoch / schedule.epochs) ** 0.9

    return optax.chain(
        optax.clip_by_global_norm(12.0),
        optax.add_decayed_weights(schedule.weight_decay),
        optax.sgd(lr, momentum=schedule.momentum, nesterov=True),
    )


def make_model(config: ConfigurationPlan, ife: str | None) -> NNUNet:
    return NNUNet(config, ife=ife)


def init_state(model: NNUNet, config: ConfigurationPlan, tx, seed: int):
    x = jnp.zeros((1, *config.patch_size, config.in_channels))
    params = model.init(jax.random.key(seed), x, train=False)["params"]
    return {"params": params, "opt_state": tx.init(params), "step": jnp.zeros((), jnp.int32)}


def make_train_step(model: NNUNet, config: ConfigurationPlan, tx, seed: int):
    def step_fn(state, images, seg):
        key = jax.random.fold_in(jax.random.key(seed + 1), state["step"])
        keys = jax.random.split(key, images.shape[0])
        img = jnp.moveaxis(images, -1, 1)
        img, seg = jax.vmap(aug.augment)(keys, img, seg)
        img = jnp.moveaxis(img, 1, -1)

        def loss_fn(params):
            outs = model.apply({"params": params}, img, train=True)
            return deep_supervision_loss(outs, seg, config)

        loss, grads = jax.value_and_grad(loss_fn)(state["params"])
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        return {"params": params, "opt_state": opt_state, "step": state["step"] + 1}, loss

    return step_fn


def train(
    *,
    preprocessed: Path,
    output: Path,
    config: ConfigurationPlan,
    case_names,
    schedule: Schedule | None = None,
    ife: str | None = None,
    log=print,
) -> list[float]:
    """Trains (or resumes) into ``output``; returns the mean loss of every epoch run now."""
    from ife_jax.train.checkpointing import Checkpointer
    from ife_jax.train.sharding import batch_sharding, make_mesh, replicated
    from ife_jax.train.workdir import WorkdirLock

    schedule = schedule or Schedule()
    output.mkdir(parents=True, exist_ok=True)
    cases = []
    for name in case_names:
        data, seg, _ = load_case(preprocessed, name)
        cases.append((data, seg, np.argwhere(seg > 0)))
    model = make_model(config, ife)
    tx = make_optimizer(schedule)
    mesh = make_mesh()
    shard_batch = config.batch_size % mesh.size == 0
    rep = replicated(mesh)
    data_sh = batch_sharding(mesh) if shard_batch else rep
    state = jax.jit(lambda: init_state(model, config, tx, schedule.seed), out_shardings=rep)()
    step = jax.jit(
        make_train_step(model, config, tx, schedule.seed),
        in_shardings=(rep, data_sh, data_sh),
        out_shardings=(rep, rep),
        donate_argnums=(0,),
    )
    losses = []
    with WorkdirLock(output):
        ckpt = Checkpointer(output, keep=2)
        try:
            abstract = jax.tree.map(
                lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=rep), state
            )
            restored = ckpt.restore(abstract)
            start_epoch = 0
            if restored is not None:
                state, data_state, _ = restored
                start_epoch = int(data_state["epoch"])
                log(f"resumed at epoch {start_epoch}")
            for epoch in range(start_epoch, schedule.epochs):
                t0, total = time.time(), 0.0
                for it in range(schedule.iterations):
                    global_step = epoch * schedule.iterations + it
                    rng = np.random.default_rng([schedule.seed, global_step])
                    images, seg = sample_batch(cases, config, rng, schedule.oversample_foreground)
                    state, loss = step(state, images, seg)
                    total += float(loss)
                mean = total / schedule.iterations
                if not math.isfinite(mean):
                    raise FloatingPointError(f"epoch {epoch}: the training loss is {mean}.")
                losses.append(mean)
                record = {"epoch": epoch, "loss": mean, "seconds": round(time.time() - t0, 3)}
                with open(output / "progress.jsonl", "a") as f:
                    f.write(json.dumps(record) + "\n")
                log(f"epoch {epoch}: loss {mean:.4f} ({record['seconds']} s)")
                meta = {"configuration": config.configuration, "ife": ife, "epoch": epoch + 1}
                ckpt.save((epoch + 1) * schedule.iterations, state, {"epoch": epoch + 1}, meta)
        finally:
            ckpt.close()
    return losses


def load_params(output: Path, model: NNUNet, config: ConfigurationPlan):
    """The newest checkpoint's parameters of a finished (or running) training."""
    from ife_jax.train.checkpointing import Checkpointer

    ckpt = Checkpointer(output, read_only=True)
    try:
        tx = make_optimizer(Schedule())
        state = jax.eval_shape(lambda: init_state(model, config, tx, 0))
        restored = ckpt.restore(state)
    finally:
        ckpt.close()
    if restored is None:
        raise ValueError(f"{output}: no checkpoint to predict with (train first).")
    return restored[0]["params"]
