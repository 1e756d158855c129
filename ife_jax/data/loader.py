"""grain input pipelines over a random-access DMIS source (e.g. ``tfds_cosmos.load(...)``).

A *source* is anything with ``len(source)`` and ``source[i] -> dict`` holding ``image`` uint8
(H, W, 3) and ``mask`` uint8 (H, W[, 1]) 0/1 (plus ``image_id`` for evaluation): a TFDS
``as_data_source`` split, or a plain list of such dicts.

Training::

    loader = make_train_loader(source, batch_size=32, seed=0, num_workers=4)
    it = iter(loader)
    batch = next(it)          # {"image": (B, S, S, 3) float32, "mask": (B, S, S, 1) float32}
    state = it.get_state()    # store with the checkpoint (a small dict)
    ...
    it = iter(loader); it.set_state(state)   # resumes on exactly the next batch

Evaluation goes through :mod:`ife_jax.train.inference` (``make_eval_loader`` and
``invert_eval_batch`` are deprecated).

Every batch has one side S drawn from ``sizes``; records are reshuffled every epoch; the stream
is a pure function of (source, seed, batch_size, sizes, shard_index, shard_count), whatever
``num_workers`` is. Scripts that use ``num_workers > 0`` need an ``if __name__ == "__main__":``
guard (worker processes re-import the main module); absl flags are marked as parsed here if
nothing parsed them.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Sequence

import grain
import numpy as np

from ife_jax.data import transforms as T

_ELEMENT, _BATCH = 0, 1


def _check_shard(shard_index: int, shard_count: int) -> None:
    if shard_count < 1 or not 0 <= shard_index < shard_count:
        raise ValueError(
            f"need 0 <= shard_index < shard_count, got shard_index={shard_index}, "
            f"shard_count={shard_count}"
        )


def _worker_init(worker_index: int, worker_count: int) -> None:
    """One OpenCV thread per worker process: the processes already fill the cores."""
    import cv2

    cv2.setNumThreads(1)


def _finish(ds: grain.MapDataset, num_workers: int, num_threads: int, prefetch: int):
    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers}")
    it_ds = ds.to_iter_dataset(
        grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch)
    )
    if num_workers > 0:
        from absl import flags

        # grain reads absl flags in its workers; programs that do not use absl never parse them.
        if not flags.FLAGS.is_parsed():
            flags.FLAGS.mark_as_parsed()
        it_ds = it_ds.mp_prefetch(
            grain.MultiprocessingOptions(num_workers=num_workers), worker_init_fn=_worker_init
        )
    return it_ds


@dataclasses.dataclass(frozen=True)
class _TrainTransform:
    """Element ``index`` of the shuffled, repeated stream -> one augmented, resized example."""

    seed: int
    batch_size: int
    sizes: tuple[int, ...]
    augment: T.AugmentConfig

    def __call__(self, index: int, record: dict) -> dict:
        rng = np.random.default_rng([self.seed, _ELEMENT, index])
        batch_rng = np.random.default_rng([self.seed, _BATCH, index // self.batch_size])
        size = self.sizes[int(batch_rng.integers(len(self.sizes)))]
        image, mask = T.as_image_mask(record)
        image, mask = T.train_augment(image, mask, rng, config=self.augment)
        image, mask = T.resize_pair(T.normalize(image), mask, size)
        return {"image": image, "mask": mask}


def make_train_loader(
    data_source,
    *,
    batch_size: int,
    seed: int,
    sizes: Sequence[int] = T.TRAIN_SIZES,
    num_workers: int = 0,
    shard_index: int = 0,
    shard_count: int = 1,
    num_epochs: int | None = None,
    augment: T.AugmentConfig = T.REFERENCE_AUGMENT,
    num_threads: int = 2,
    prefetch: int = 8,
) -> grain.IterDataset:
    """The training pipeline of the reference recipe as a resumable grain dataset.

    Args:
      data_source: random-access source (module docstring).
      batch_size: examples per batch on this shard (the last incomplete batch is dropped).
      seed: shuffling, augmentation and batch sizes all follow from it.
      sizes: candidate sides; each batch is resized to one of them, drawn uniformly.
      num_workers: 0 = in this process; N = N worker processes (same batches, same order).
      shard_index, shard_count: this host's share of the records
        (``source[shard_index::shard_count]``), e.g. ``jax.process_index()``,
        ``jax.process_count()``.
      num_epochs: None = repeat forever; else stop after that many passes (reshuffled each).
      augment: probabilities/limits (``transforms.NO_AUGMENT`` for padding + resize only).
      num_threads, prefetch: grain read threads and prefetch depth per process.

    Returns:
      a ``grain.IterDataset``; ``iter()`` gives an iterator of dicts with ``"image"``, float32
      (B, S, S, 3) normalised with ``transforms.MEAN``/``STD``, and ``"mask"``, float32
      (B, S, S, 1) in [0, 1], with ``get_state()`` / ``set_state(state)``.

    Raises:
      ValueError: bad batch size, sizes, shard or worker arguments, or an empty shard.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    sizes = tuple(int(s) for s in sizes)
    if not sizes or min(sizes) < 1:
        raise ValueError(f"sizes must be positive sides, got {sizes}")
    if num_epochs is not None and num_epochs < 1:
        raise ValueError(f"num_epochs must be None or >= 1, got {num_epochs}")
    _check_shard(shard_index, shard_count)
    ds = grain.MapDataset.source(data_source)[shard_index::shard_count]
    if len(ds) == 0:
        raise ValueError(f"shard {shard_index} of {shard_count} of the source is empty")
    ds = ds.shuffle(seed=seed).repeat(num_epochs)
    ds = ds.map_with_index(_TrainTransform(seed, batch_size, sizes, augment))
    ds = ds.batch(batch_size, drop_remainder=True)
    return _finish(ds, num_workers, num_threads, prefetch)


class _PaddedShard:
    """Shard ``k`` of a source, padded (by repeating its last record) to ``length`` items."""

    def __init__(self, source, shard_index: int, shard_count: int, length: int):
        self.source = source
        self.indices = list(range(shard_index, len(source), shard_count))
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int):
        valid = i < len(self.indices)
        index = self.indices[i] if valid else self.indices[-1]
        return index, valid, self.source[index]


@dataclasses.dataclass(frozen=True)
class _EvalTransform:
    size: int

    def __call__(self, item) -> dict:
        index, valid, record = item
        image, mask = T.as_image_mask(record)
        x, meta = T.eval_transform(image, size=self.size)
        padded, _, _ = T.pad_to_square(mask)
        _, m = T.resize_pair(np.zeros((1, 1, 3), np.float32), padded, self.size)
        if padded.shape[0] == self.size:
            m = padded.astype(np.float32)[:, :, None]
        image_id = record.get("image_id", b"")
        if isinstance(image_id, bytes):
            image_id = image_id.decode("utf-8")
        out = {
            "image": x,
            "mask": m,
            "index": np.int64(index),
            "valid": np.bool_(valid),
            "image_id": np.str_(image_id),
        }
        out.update({k: np.int32(v) for k, v in meta.items()})
        return out


def make_eval_loader(
    data_source,
    *,
    batch_size: int,
    size: int = T.EVAL_SIZE,
    num_workers: int = 0,
    shard_index: int = 0,
    shard_count: int = 1,
    num_threads: int = 2,
    prefetch: int = 8,
) -> grain.IterDataset:
    """Deprecated: :func:`ife_jax.train.inference.iter_predictions` is the one evaluation
    path (streamed, every process gets every map); it applies
    :func:`~ife_jax.data.transforms.eval_transform` and
    :func:`~ife_jax.data.transforms.invert_eval` per image, which data pipelines of their own
    can call directly.

    The evaluation pipeline: every record once, in source order, padded to full batches.

    Each shard yields the same number of batches (``ceil(len / shard_count / batch_size)``), the
    last ones padded with copies flagged ``valid=False``, so every host can run the same jitted
    step.

    Returns:
      a ``grain.IterDataset`` of dicts (B = ``batch_size``):
        ``image`` float32 (B, size, size, 3), normalised, padded to square then resized;
        ``mask`` float32 (B, size, size, 1), the mask under the same mapping (bilinear, soft);
        ``index`` int64 (B,), the record index in ``data_source`` (fetch the original mask
        with ``data_source[index]["mask"]``);
        ``valid`` bool (B,); ``image_id`` str (B,);
        ``height``, ``width``, ``pad_top``, ``pad_left``, ``padded_size`` int32 (B,): pass
        one example's values to ``transforms.invert_eval`` (or use :func:`invert_eval_batch`)
        to bring a (size, size) prediction back to (height, width).
    """
    _deprecated("make_eval_loader")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    _check_shard(shard_index, shard_count)
    n = len(data_source)
    if n == 0:
        raise ValueError("the source is empty")
    per_shard = math.ceil(n / shard_count)
    length = math.ceil(per_shard / batch_size) * batch_size
    if shard_index >= n:
        raise ValueError(f"shard {shard_index} of {shard_count} is empty ({n} records)")
    ds = grain.MapDataset.source(_PaddedShard(data_source, shard_index, shard_count, length))
    ds = ds.map(_EvalTransform(int(size))).batch(batch_size, drop_remainder=False)
    return _finish(ds, num_workers, num_threads, prefetch)


def _deprecated(name: str) -> None:
    warnings.warn(
        f"ife_jax.data.{name} is deprecated; evaluate through "
        "ife_jax.train.inference.iter_predictions, or call ife_jax.data.transforms."
        "eval_transform and invert_eval per image",
        DeprecationWarning,
        stacklevel=3,
    )


_META = ("height", "width", "pad_top", "pad_left", "padded_size")


def invert_eval_batch(
    predictions: np.ndarray, batch: dict, *, interpolation: str = "linear"
) -> list[np.ndarray]:
    """Deprecated with :func:`make_eval_loader` (use
    :func:`~ife_jax.data.transforms.invert_eval` per example).

    Maps a batch of (B, size, size[, C]) predictions back to each original image size.

    Args:
      predictions: NumPy (or ``jax.Array``, converted) predictions on ``batch["image"]``.
      batch: a batch of :func:`make_eval_loader`.
      interpolation: ``"linear"`` or ``"nearest"``.

    Returns:
      one array per *valid* example, (height_i, width_i[, C]), in batch order.
    """
    _deprecated("invert_eval_batch")
    predictions = np.asarray(predictions)
    out = []
    for i in range(predictions.shape[0]):
        if not bool(batch["valid"][i]):
            continue
        meta = {k: int(batch[k][i]) for k in _META}
        out.append(T.invert_eval(predictions[i], interpolation=interpolation, **meta))
    return out
