"""grain loaders: determinism, epochs, sharding, batch sizes, state save/restore, workers."""

import numpy as np
import pytest

from ife_jax.data import NO_AUGMENT, invert_eval_batch, make_eval_loader, make_train_loader
from ife_jax.data import transforms as T


def _source(n=10):
    """Records whose image encodes the record number: value 10 + 20 * k inside a square."""
    out = []
    for k in range(n):
        h, w = 20 + k, 26 - k % 4
        mask = np.zeros((h, w, 1), np.uint8)
        mask[4:12, 5:13] = 1
        image = np.where(mask > 0, 10 + 20 * k, 0).astype(np.uint8).repeat(3, axis=2)
        out.append({"image": image, "mask": mask, "image_id": f"CT_Box_{k}".encode()})
    return out


def _take(it, n):
    return [next(it) for _ in range(n)]


def _same(a, b):
    return all(np.array_equal(x[k], y[k]) for x, y in zip(a, b, strict=True) for k in x)


def _record_of(batch_image, i):
    """Recover k from the brightest normalised pixel of example i (no intensity augmentation)."""
    v = T.denormalize(batch_image[i])[..., 0].max()
    return int(round((v - 10) / 20))


def test_batches_have_one_random_size_and_right_dtypes():
    it = iter(make_train_loader(_source(), batch_size=3, seed=0, sizes=(16, 24, 32)))
    sides = set()
    for b in _take(it, 8):
        assert b["image"].dtype == np.float32 and b["mask"].dtype == np.float32
        s = b["image"].shape[1]
        assert b["image"].shape == (3, s, s, 3) and b["mask"].shape == (3, s, s, 1)
        assert 0.0 <= b["mask"].min() and b["mask"].max() <= 1.0
        sides.add(s)
    assert sides <= {16, 24, 32} and len(sides) > 1


def test_deterministic_for_a_seed_and_different_for_another():
    a = _take(iter(make_train_loader(_source(), batch_size=4, seed=1, sizes=(24,))), 5)
    b = _take(iter(make_train_loader(_source(), batch_size=4, seed=1, sizes=(24,))), 5)
    c = _take(iter(make_train_loader(_source(), batch_size=4, seed=2, sizes=(24,))), 5)
    assert _same(a, b) and not _same(a, c)


def test_every_epoch_visits_each_record_once_in_a_new_order():
    loader = make_train_loader(
        _source(10), batch_size=5, seed=0, sizes=(32,), augment=NO_AUGMENT, num_epochs=3
    )
    batches = list(loader)
    assert len(batches) == 6
    order = [_record_of(b["image"], i) for b in batches for i in range(5)]
    epochs = [order[0:10], order[10:20], order[20:30]]
    for e in epochs:
        assert sorted(e) == list(range(10))
    assert epochs[0] != epochs[1] and epochs[1] != epochs[2]


def test_shards_are_disjoint_and_cover_the_source():
    seen = []
    for shard in range(3):
        loader = make_train_loader(_source(9), batch_size=3, seed=0, sizes=(32,),
                                   augment=NO_AUGMENT, num_epochs=1, shard_index=shard,
                                   shard_count=3)  # fmt: skip
        seen += [_record_of(b["image"], i) for b in loader for i in range(3)]
    assert sorted(seen) == list(range(9))
    with pytest.raises(ValueError, match="shard_index"):
        make_train_loader(_source(), batch_size=2, seed=0, shard_index=3, shard_count=3)


def test_state_restore_resumes_on_the_exact_next_batch():
    loader = make_train_loader(_source(7), batch_size=3, seed=4, sizes=(16, 32))
    it = iter(loader)
    _take(it, 4)  # crosses an epoch boundary (7 records, 3 per batch)
    state = it.get_state()
    expected = _take(it, 3)
    resumed = iter(make_train_loader(_source(7), batch_size=3, seed=4, sizes=(16, 32)))
    resumed.set_state(state)
    assert _same(_take(resumed, 3), expected)


def test_one_worker_process_gives_the_same_batches():
    kw = dict(batch_size=2, seed=3, sizes=(16, 24))
    want = _take(iter(make_train_loader(_source(6), **kw)), 4)
    it = iter(make_train_loader(_source(6), num_workers=1, **kw))
    assert _same(_take(it, 4), want)
    assert it.get_state()  # restorable like the in-process iterator


def test_eval_loader_pads_batches_and_inverts_to_original_size():
    src = _source(5)
    with pytest.deprecated_call():
        batches = list(make_eval_loader(src, batch_size=2, size=32))
    assert len(batches) == 3
    valid = np.concatenate([b["valid"] for b in batches])
    assert valid.tolist() == [True] * 5 + [False]
    assert np.concatenate([b["index"] for b in batches])[:5].tolist() == list(range(5))
    assert batches[0]["image_id"].tolist() == ["CT_Box_0", "CT_Box_1"]
    outs = []
    for b in batches:
        # An identity "model": the mask channel of the eval image as the prediction.
        with pytest.deprecated_call():
            outs += invert_eval_batch(b["mask"], b)
    assert len(outs) == 5
    for k, out in enumerate(outs):
        h, w = src[k]["mask"].shape[:2]
        assert out.shape == (h, w, 1)
        agree = ((out[..., 0] > 0.5) == (src[k]["mask"][..., 0] > 0)).mean()
        assert agree > 0.97


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_eval_shards_have_equal_batch_counts():
    counts = [
        len(
            list(make_eval_loader(_source(7), batch_size=2, size=16, shard_index=s, shard_count=2))
        )  # fmt: skip
        for s in range(2)
    ]
    assert counts == [2, 2]
