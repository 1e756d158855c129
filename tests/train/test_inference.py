"""The one evaluation path (``ife_jax.train.inference``): streamed, in order, each map back at
its image's size, the same maps as the deprecated grain evaluation loader."""

import jax
import numpy as np
import pytest

from ife_jax.data import invert_eval_batch, make_eval_loader
from ife_jax.train.inference import iter_predictions, predict_images
from ife_jax.train.sharding import make_mesh

SIZE = 32
# Channel 0 of an image that is 255 on the mask and 0 elsewhere is, after resizing and
# normalisation, positive exactly where the resized value exceeds MEAN[0] = 124.55 (the resized
# mask above 0.49): its sign is a "model" whose prediction is the mask, so inverting it must
# give the mask back up to the resampled edges.


@jax.jit
def _mask_model(variables, x):
    return (x[..., :1] > 0).astype(np.float32)


def _records(n):
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        h, w = int(rng.integers(20, 50)), int(rng.integers(20, 50))
        mask = np.zeros((h, w, 1), np.uint8)
        mask[h // 4 : 3 * h // 4, w // 5 : 3 * w // 5] = 1
        image = np.repeat(mask * 255, 3, axis=-1)
        out.append({"image": image, "mask": mask, "image_id": f"CT_Box_{i}"})
    return out


class _Counted:
    """An iterable of images that counts how many were read."""

    def __init__(self, images):
        self.images, self.read = images, 0

    def __iter__(self):
        for image in self.images:
            self.read += 1
            yield image


@pytest.mark.parametrize("n, batch_size", [(1, 1), (5, 2), (4, 4)])
def test_maps_come_back_in_order_at_each_image_size(n, batch_size):
    records = _records(n)
    maps = predict_images(
        _mask_model,
        None,
        [r["image"] for r in records],
        size=SIZE,
        batch_size=batch_size,
        mesh=make_mesh(),
    )
    assert len(maps) == n
    for prob, r in zip(maps, records, strict=True):
        assert prob.shape == r["mask"].shape[:2] and prob.dtype == np.float32
        agree = ((prob > 0.5) == (r["mask"][..., 0] > 0)).mean()
        assert agree > 0.97  # only the resampled edges may differ


def test_images_are_read_one_batch_at_a_time():
    images = _Counted([r["image"] for r in _records(7)])
    maps = iter_predictions(_mask_model, None, images, size=SIZE, batch_size=3, mesh=make_mesh())
    assert images.read == 0  # nothing is read before the first map is asked for
    next(maps)
    assert images.read == 3
    rest = list(maps)
    assert len(rest) == 6 and images.read == 7


def test_the_same_maps_as_the_grain_evaluation_loader():
    records = _records(5)
    want = []
    with pytest.deprecated_call():
        for batch in make_eval_loader(records, batch_size=2, size=SIZE):
            out = np.asarray(_mask_model(None, batch["image"]))
            with pytest.deprecated_call():
                want += [m[..., 0] for m in invert_eval_batch(out, batch)]
    got = predict_images(
        _mask_model, None, [r["image"] for r in records], size=SIZE, batch_size=2, mesh=make_mesh()
    )
    assert len(got) == len(want) == 5
    for a, b in zip(got, want, strict=True):
        np.testing.assert_array_equal(a, b)
