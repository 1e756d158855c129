"""The datasets of ``tfds_cosmos`` as training input and evaluation examples."""

from __future__ import annotations

import threading
from collections.abc import Sequence

import jax
import numpy as np

from ife_jax.train.config import TrainConfig
from ife_jax.train.input import Example


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
    return SourceExamples(_source(dataset, split, data_dir), limit)


#: Decoded data kept in memory so that a small dataset is decoded once, not every epoch
#: (decoding a 350 x 336 PNG pair takes about as long as augmenting it): the training records
#: (:class:`KeptRecords`) and, separately, the validation examples of the training loop may
#: each take at most this many bytes.
KEEP_DECODED_BYTES = 256 * 2**20


class KeptRecords:
    """A random-access source whose records, once read, are kept while the kept ones take at
    most ``budget`` bytes (NumPy values counted); later reads of a kept record return the same
    read-only arrays, so a transform that would change a record in place fails instead of
    changing the next epoch's data. Records past the budget are read from ``source`` each time.
    """

    def __init__(self, source, budget: int | None = None):
        self.source = source
        self.budget = KEEP_DECODED_BYTES if budget is None else budget
        self.kept: dict[int, dict] = {}
        self.size = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> dict:
        record = self.kept.get(i)
        if record is not None:
            return record
        record = self.source[i]
        nbytes = sum(v.nbytes for v in record.values() if isinstance(v, np.ndarray))
        with self._lock:
            if i not in self.kept and self.size + nbytes <= self.budget:
                for v in record.values():
                    if isinstance(v, np.ndarray):
                        v.flags.writeable = False
                self.kept[i] = record
                self.size += nbytes
        return record


class GrainTrainInput:
    """The grain training pipeline of ``ife_jax.data`` as the loop consumes it.

    Each process reads its own shard of the records (``source[process_index::process_count]``)
    and makes its share of every global batch from it; the iterator state is grain's.
    """

    def __init__(self, source, config: TrainConfig):
        from ife_jax.data import AUGMENTATIONS, make_train_loader

        count, index = jax.process_count(), jax.process_index()
        if config.batch_size % count:
            raise ValueError(
                f"batch_size={config.batch_size} must be divisible by the number of processes "
                f"({count})"
            )
        local = config.batch_size // count
        self.steps_per_epoch = len(range(index, len(source), count)) // local
        if self.steps_per_epoch < 1:
            raise ValueError(
                f"batch_size={config.batch_size} exceeds the {len(source)} training examples"
            )
        if config.num_workers == 0:  # worker processes would each keep their own copy
            source = KeptRecords(source)
        self._source = source
        dataset = make_train_loader(
            source,
            batch_size=local,
            seed=config.seed,
            sizes=config.train_sizes,
            num_workers=config.num_workers,
            shard_index=index,
            shard_count=count,
            augment=AUGMENTATIONS[config.augment],
        )
        self._iterator = iter(dataset)

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        return next(self._iterator)

    def first_images(self, n: int) -> list[np.ndarray]:
        """The images of the first ``n`` training records (all of them if fewer), as stored:
        (H, W, 3) uint8, the same in every process."""
        return [self._source[i]["image"] for i in range(min(n, len(self._source)))]

    def get_state(self) -> dict:
        return self._iterator.get_state()

    def set_state(self, state: dict) -> None:
        self._iterator.set_state(state)


class _Limited:
    """The first ``n`` records of a source."""

    def __init__(self, source, n: int):
        self.source, self.n = source, min(n, len(source))

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i):
        if not 0 <= i < self.n:
            raise IndexError(i)
        return self.source[i]


def _source(dataset: str, split: str, data_dir: str | None):
    import tfds_cosmos

    try:
        return tfds_cosmos.load(dataset, split=split, data_dir=data_dir)
    except KeyError as err:
        raise ValueError(f"dataset {dataset!r} has no split {split!r}") from err


def load_inputs(config: TrainConfig):
    """``(train_input, validation_examples)`` for ``config``; each process reads its own shard.

    The validation examples are a sequence decoded on access from the dataset's random-access
    source, not a list held in memory for the whole run.
    """
    source = _source(config.dataset, config.train_split, config.data_dir)
    if config.max_train_examples is not None:
        source = _Limited(source, config.max_train_examples)
    val = load_examples(
        config.dataset,
        config.eval_split,
        data_dir=config.data_dir,
        limit=config.max_eval_examples,
    )
    return GrainTrainInput(source, config), val
