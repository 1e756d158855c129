"""The datasets of ``tfds_cosmos`` as training input and evaluation examples."""

from __future__ import annotations

from collections.abc import Sequence

import jax

from ife_jax.train.config import TrainConfig
from ife_jax.train.input import ArrayInput, Example


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class SourceExamples(Sequence):
    """A random-access TFDS source seen as a sequence of ``Example`` (decoded on access)."""

    def __init__(self, source, limit: int | None = None):
        self.source = source
        self.n = len(source) if limit is None else min(limit, len(source))

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(self.n))]
        if not -self.n <= i < self.n:
            raise IndexError(i)
        r = self.source[i % self.n]
        mask = r["mask"][..., 0] if r["mask"].ndim == 3 else r["mask"]
        return Example(
            image=r["image"],
            mask=(mask > 0).astype("uint8"),
            image_id=_text(r["image_id"]),
            modality=_text(r["modality"]),
            anatomy=_text(r["anatomy"]),
        )


def load_examples(
    dataset: str, split: str, *, data_dir: str | None = None, limit: int | None = None
) -> SourceExamples:
    """The examples of ``split`` of ``dataset`` (built first if it does not exist yet)."""
    import tfds_cosmos

    try:
        source = tfds_cosmos.load(dataset, split=split, data_dir=data_dir)
    except KeyError as err:
        raise ValueError(f"dataset {dataset!r} has no split {split!r}") from err
    return SourceExamples(source, limit)


def load_inputs(config: TrainConfig):
    """``(train_input, validation_examples)`` for ``config``; each process reads its own rows."""
    train = load_examples(
        config.dataset,
        config.train_split,
        data_dir=config.data_dir,
        limit=config.max_train_examples,
    )
    val = load_examples(
        config.dataset,
        config.eval_split,
        data_dir=config.data_dir,
        limit=config.max_eval_examples,
    )
    train_input = ArrayInput(
        train,
        global_batch_size=config.batch_size,
        sizes=config.train_sizes,
        seed=config.seed,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )
    return train_input, list(val)
