"""Precise BatchNorm statistics (``ife_jax.train.precise_bn``, ``precise_bn_examples``).

Oracle: the same network with ``bn_momentum=0``, whose running averages after one training
forward are that batch's statistics, pooled over the batches in float64 NumPy.

Error model: both paths compute each batch's moments in float32 through the same layers, but
as different programs (other fusions, other summation orders). A float32 sum of n terms moves by
at most about lambda sqrt(n) u sum|x_i| when reordered (u = 2^-24; Higham and Mary's
probabilistic bound, lambda = 10), and the error of each layer carries into the next. With
sums of at most 9 x 64 terms (a 3 x 3 convolution over 64 channels) or 3 x 32 x 32 (a batch
statistic), through the tiny UNet's 18 BatchNorms: 18 x 10 x sqrt(3072) x u = 6e-4 of the
layer's scale |mean| + std (squared for a variance). Statistics pooled wrongly (the variances
averaged without the spread of the batch means, the running averages kept, the left-out
partial batch counted) are off by 10 to 5,000 times that bound, which the first test checks.
"""

import functools
import json
import subprocess
import sys
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _models import random_variables
from flax.traverse_util import flatten_dict

from ife_jax.nn.unet import UNet
from ife_jax.train import input as input_lib
from ife_jax.train.config import preset
from ife_jax.train.precise_bn import make_moments_step, precise_batch_stats
from ife_jax.train.sharding import make_mesh

SIZE = 32
KW = dict(widths=(4, 8, 16, 32, 64), ife="curvature", ratios=(0.5, 0.5))
TOL = 18 * 10 * np.sqrt(3 * SIZE * SIZE) * 2.0**-24


def _images(n, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (28 + 3 * i, 36, 3), dtype=np.uint8) for i in range(n)]


def _other(name, leaf, rng):
    """BatchNorm scales and biases and conv biases drawn, so that every layer's statistics
    matter; the running averages at their initial values (mean 0, variance 1)."""
    if name in ("mean", "var"):
        return jnp.full(leaf.shape, 0.0 if name == "mean" else 1.0, leaf.dtype)
    centre = 1.0 if name == "scale" else 0.0
    return jnp.asarray(rng.normal(centre, 0.2, leaf.shape), leaf.dtype)


def _variables():
    return random_variables(UNet(**KW), (1, SIZE, SIZE, 3), other=_other)


def _batch_moments(variables, images, batch_size, *, model=None, size=SIZE):
    """Per BatchNorm (flattened path): each whole batch's float64 (mean, var), from the
    running averages of the network (default the tiny UNet) with ``bn_momentum=0``."""
    forward = _momentum_zero_forward(model or UNet(**KW, bn_momentum=0.0))
    out = {}
    for k in range(len(images) // batch_size):
        chunk = images[k * batch_size : (k + 1) * batch_size]
        batch = np.stack([input_lib.eval_transform(im, size)[0] for im in chunk])
        for path, x in flatten_dict(forward(variables, batch)).items():
            out.setdefault(path[:-1], {}).setdefault(path[-1], []).append(np.float64(x))
    return out


@functools.cache
def _momentum_zero_forward(model):
    assert model.bn_momentum == 0.0
    return jax.jit(
        lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"])[1]["batch_stats"]
    )


def _pooled(moments):
    """The mean and biased variance over all positions of all batches."""
    out = {}
    for layer, m in moments.items():
        means, variances = np.array(m["mean"]), np.array(m["var"])
        mean = means.mean(0)
        out[(*layer, "mean")] = mean
        out[(*layer, "var")] = (variances + means**2).mean(0) - mean**2
    return out


def _scale(moments):
    """Per statistic: the largest |mean| + std of its layer over the batches (squared for the
    variance, a difference of second moments)."""
    out = {}
    for layer, m in moments.items():
        scale = np.max(np.abs(m["mean"]) + np.sqrt(m["var"]), axis=0)
        out[(*layer, "mean")], out[(*layer, "var")] = scale, scale**2
    return out


def _worst(got, want, scale):
    """The largest |got - want| in units of the bound ``TOL * scale``."""
    assert set(got) == set(want)
    return max(float(np.max(np.abs(got[k] - want[k]) / (TOL * scale[k]))) for k in want)


def test_precise_statistics_pool_every_batch_of_every_layer():
    mesh = make_mesh()
    variables, images = _variables(), _images(7)  # batches of 3: the 7th image is left out
    stats = precise_batch_stats(
        make_moments_step(UNet(**KW), mesh), variables, images, size=SIZE, batch_size=3, mesh=mesh
    )
    got = {k: np.float64(v) for k, v in flatten_dict(stats).items()}
    assert all(v.dtype == np.float32 for v in flatten_dict(stats).values())
    moments = _batch_moments(variables, images, 3)
    want, scale = _pooled(moments), _scale(moments)
    assert len(want) == 2 * 18
    assert _worst(got, want, scale) <= 1.0

    # What the bound would catch: variances averaged without the spread of the batch means,
    # the initial running averages kept, the left-out image counted (3 batches of 3, 3, 1).
    naive = {
        **want,
        **{(*k, "var"): np.mean(m["var"], 0) for k, m in moments.items()},
    }
    assert _worst(naive, want, scale) > 10
    initial = {k: np.float64(v) for k, v in flatten_dict(variables["batch_stats"]).items()}
    assert _worst(initial, want, scale) > 10
    with_last = _pooled(_batch_moments(variables, images[:6] + images[6:] * 3, 3))
    assert _worst(with_last, want, scale) > 10


def test_precise_statistics_refuse_too_few_images_and_foreign_batchnorms():
    mesh = make_mesh()
    variables = _variables()
    step = make_moments_step(UNet(**KW), mesh)
    with pytest.raises(ValueError, match="at least one batch of 4 images; got 3"):
        precise_batch_stats(step, variables, _images(3), size=SIZE, batch_size=4, mesh=mesh)

    class FlaxBN(nn.Module):  # flax.linen.BatchNorm does not report its batch moments
        @nn.compact
        def __call__(self, x, train=True):
            return nn.BatchNorm(use_running_average=not train)(x)

    model = FlaxBN()
    v = model.init(jax.random.key(0), jnp.zeros((1, SIZE, SIZE, 3)))
    with pytest.raises(ValueError, match="did not all report their batch moments"):
        precise_batch_stats(
            make_moments_step(model, mesh), v, _images(4), size=SIZE, batch_size=4, mesh=mesh
        )


@pytest.mark.parametrize("value", [-4, 1, 3])
def test_config_refuses_fewer_examples_than_a_batch(value):
    with pytest.raises(ValueError, match=r"precise_bn_examples=.*at least batch_size=4"):
        preset("tiny", precise_bn_examples=value)
    assert preset("tiny", precise_bn_examples=4).precise_bn_examples == 4
    assert preset("unet").precise_bn_examples == 0  # the reference keeps the running averages


def test_a_training_input_without_enough_first_images_is_refused_before_anything_is_written(
    tmp_path,
):
    from ife_jax.train.loop import train_and_evaluate

    class NoImages:
        steps_per_epoch = 1

    class TwoImages(NoImages):
        def first_images(self, n):
            return _images(2)

    config = preset("tiny", precise_bn_examples=4)
    with pytest.raises(ValueError, match="NoImages has no first_images"):
        train_and_evaluate(config, tmp_path / "w", inputs=lambda c: (NoImages(), []))
    with pytest.raises(ValueError, match="gave 2 images, fewer than one batch of 4"):
        train_and_evaluate(config, tmp_path / "w", inputs=lambda c: (TwoImages(), []))
    assert not (tmp_path / "w" / "config.json").exists()


def test_training_with_precise_statistics_changes_only_the_statistics(tmp_path, train_env):
    """Two tiny runs, with and without ``precise_bn_examples``: the same weights and optimiser
    state bit for bit (the train step never reads the running averages), and the checkpoint's
    statistics those of its weights over the first images."""
    from tinyrun import blob_examples, params_digest, tiny_config

    from ife_jax.train.checkpointing import Checkpointer
    from ife_jax.train.models import build_model

    script = Path(__file__).parent / "tinyrun.py"
    args = ["--epochs", "2", "--examples", "16"]
    for name, extra in (("plain", []), ("precise", ["--precise-bn", "10"])):
        out = subprocess.run(
            [sys.executable, str(script), str(tmp_path / name), *args, *extra],
            env=train_env(), capture_output=True, text=True, timeout=400,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr[-3000:]
    plain, precise = params_digest(tmp_path / "plain"), params_digest(tmp_path / "precise")
    assert plain.keys() == precise.keys()
    stats_keys = [k for k in plain if "batch_stats" in k]
    assert stats_keys
    for k in plain.keys() - set(stats_keys):
        np.testing.assert_array_equal(plain[k], precise[k], err_msg=k)

    records = [json.loads(line) for line in (tmp_path / "precise" / "metrics.jsonl").open()]
    validations = [r for r in records if "val_dice" in r]
    assert [r["epoch"] for r in validations] == [1, 2]
    assert all(r["precise_bn_seconds"] > 0 for r in validations)

    # The latest checkpoint (after epoch 2's validation): its statistics are the pooled moments
    # of its weights over the first 8 training images (10 rounded down to batches of 4).
    config = tiny_config(epochs=2, max_train_examples=16)
    ck = Checkpointer(tmp_path / "precise")
    state, _, _ = ck.read()
    ck.close()
    variables = {"params": state["params"], "batch_stats": state["batch_stats"]}
    model = build_model(config.replace(model_kwargs={**config.model_kwargs, "bn_momentum": 0.0}))
    images = [ex.image for ex in blob_examples(16)]
    moments = _batch_moments(variables, images[:8], 4, model=model, size=config.eval_size)
    want, scale = _pooled(moments), _scale(moments)
    got = {k: np.float64(v) for k, v in flatten_dict(state["batch_stats"]).items()}
    assert _worst(got, want, scale) <= 1.0
    ck = Checkpointer(tmp_path / "plain")
    running = {k: np.float64(v) for k, v in flatten_dict(ck.read()[0]["batch_stats"]).items()}
    ck.close()
    assert _worst(running, want, scale) > 10  # the running averages are not those statistics
