"""StructureLoss and Dice against ife_jax.losses, a NumPy/SciPy oracle and hand values."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest
from scipy import ndimage

from ife_jax import losses as jax_losses
from ife_jax.keras import Dice, StructureLoss
from ife_jax.keras import losses as keras_losses

ON_JAX = keras.backend.backend() == "jax"


def np_structure_loss(logits, masks):
    """The structure loss written the slow obvious way (SciPy box filter, zero padding)."""
    z = logits.astype(np.float64)[..., 0]
    m = masks.astype(np.float64)[..., 0]
    total = 0.0
    for zi, mi in zip(z, m, strict=True):
        pooled = ndimage.uniform_filter(mi, size=31, mode="constant", cval=0.0)
        w = 1.0 + 5.0 * np.abs(pooled - mi)
        p = 1.0 / (1.0 + np.exp(-zi))
        bce = np.mean(-(mi * np.log(p) + (1.0 - mi) * np.log(1.0 - p)))
        inter = np.sum(p * mi * w)
        union = np.sum((p + mi) * w)
        total += bce + 1.0 - (inter + 1.0) / (union - inter + 1.0)
    return total / len(z)


def random_case(seed=0, shape=(3, 40, 36, 1)):
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=2.0, size=shape).astype(np.float32)
    masks = np.zeros(shape, np.float32)
    masks[:, 8:30, 5:25] = 1.0
    masks[1] = ndimage.uniform_filter(masks[1], size=(5, 5, 1))  # soft edges
    masks[2] = 0.0  # an empty mask
    return logits, masks


def value(t):
    return float(keras.ops.convert_to_numpy(t))


def test_structure_loss_equals_jax_function_and_oracle():
    logits, masks = random_case()
    got = value(StructureLoss()(masks, logits))
    np.testing.assert_allclose(got, np_structure_loss(logits, masks), rtol=1e-5)
    want = float(jax_losses.structure_loss(logits, masks))
    np.testing.assert_allclose(got, want, rtol=1e-6)
    weighted = value(StructureLoss(weighted_bce=True)(masks, logits))
    want = float(jax_losses.structure_loss(logits, masks, weighted_bce=True))
    np.testing.assert_allclose(weighted, want, rtol=1e-6)


@pytest.mark.skipif(not ON_JAX, reason="compares the two implementations on the JAX backend")
def test_ops_implementation_equals_jax_function():
    logits, masks = random_case(seed=1)
    for weighted in (False, True):
        ops_loss = value(StructureLoss(weighted_bce=weighted, implementation="ops")(masks, logits))
        want = float(jax_losses.structure_loss(logits, masks, weighted_bce=weighted))
        np.testing.assert_allclose(ops_loss, want, rtol=1e-6)
    ops_dice = keras_losses.dice_per_image(logits, masks, implementation="ops")
    want = jax_losses.dice_per_image(logits, masks)
    np.testing.assert_array_equal(np.asarray(ops_dice), np.asarray(want))
    w_ops = keras_losses.boundary_weights(masks)
    np.testing.assert_allclose(
        np.asarray(w_ops), np.asarray(jax_losses.boundary_weights(masks)), atol=1e-5
    )


def test_structure_loss_hand_values():
    h, w = 20, 24
    loss = StructureLoss()
    # Logits 0 (p = 1/2) on an empty mask: weights are 1, BCE = ln 2, IoU term 1 - 1/(HW/2 + 1).
    zeros = np.zeros((2, h, w, 1), np.float32)
    want = math.log(2.0) + 1.0 - 1.0 / (0.5 * h * w + 1.0)
    np.testing.assert_allclose(value(loss(zeros, zeros)), want, rtol=1e-6)
    # A perfect, confident prediction: BCE ~ e^-30 and the IoU term is exactly 0.
    mask = np.zeros((1, h, w, 1), np.float32)
    mask[0, 5:15, 4:14] = 1.0
    confident = np.where(mask > 0, 30.0, -30.0).astype(np.float32)
    assert value(loss(mask, confident)) < 1e-6
    # Empty mask predicted empty: also ~0.
    assert value(loss(zeros[:1], np.full_like(zeros[:1], -30.0))) < 1e-6
    # Per-sample weights follow Keras' reduction: the weighted mean of per-image losses.
    per_image = keras.ops.convert_to_numpy(
        keras_losses.structure_loss_per_image(
            np.concatenate([confident, zeros[:1]]), np.concatenate([mask, zeros[:1]])
        )
    )
    np.testing.assert_allclose(per_image[1], want, rtol=1e-6)


def test_structure_loss_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="same"):
        StructureLoss()(np.zeros((1, 8, 8, 1)), np.zeros((1, 8, 9, 1)))


def square(h, w, top, left, side):
    m = np.zeros((h, w, 1), np.float32)
    m[top : top + side, left : left + side] = 1.0
    return m


def test_dice_hand_values_and_accumulation():
    gt = np.stack([square(32, 32, 4, 4, 10)] * 4)
    pred = np.stack(
        [
            square(32, 32, 4, 4, 10),  # perfect: 1
            square(32, 32, 4, 9, 10),  # shifted by half a side: 2 * 50 / 200 = 0.5
            np.zeros((32, 32, 1), np.float32),  # empty prediction: 0
            square(32, 32, 20, 20, 10),  # disjoint: 0
        ]
    )
    logits = np.where(pred > 0, 5.0, -5.0).astype(np.float32)
    per_image = keras.ops.convert_to_numpy(keras_losses.dice_per_image(logits, gt))
    np.testing.assert_array_equal(per_image, [1.0, 0.5, 0.0, 0.0])
    np.testing.assert_array_equal(per_image, np.asarray(jax_losses.dice_per_image(logits, gt)))
    metric = Dice()
    metric.update_state(gt[:2], logits[:2])
    assert value(metric.result()) == pytest.approx(0.75)
    metric.update_state(gt[2:], logits[2:])
    assert value(metric.result()) == pytest.approx(0.375)
    # Both empty scores 1.
    empty = np.zeros((1, 32, 32, 1), np.float32)
    metric.reset_state()
    metric.update_state(empty, np.full_like(empty, -5.0))
    assert value(metric.result()) == 1.0
    # sample_weight weighs images.
    metric.reset_state()
    metric.update_state(gt[:2], logits[:2], sample_weight=np.array([1.0, 3.0]))
    assert value(metric.result()) == pytest.approx((1.0 + 3 * 0.5) / 4)


def test_loss_and_metric_configs_round_trip():
    for obj in (StructureLoss(weighted_bce=True), Dice(threshold=0.3, name="dice_03")):
        revived = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(obj))
        assert type(revived) is type(obj)
        assert revived.get_config() == obj.get_config()
