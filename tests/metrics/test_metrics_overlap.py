"""Overlap and volume metrics on hand-worked geometry and every empty-mask case."""

import numpy as np
import pytest

from ife_jax.metrics import (
    CON_DSC_FLOOR,
    conformity,
    dice,
    f1,
    fbeta,
    jaccard,
    mae,
    rvd,
    rvd_abs_percent,
)


def square(shape=(32, 32), top=8, left=8, side=10):
    m = np.zeros(shape, bool)
    m[top : top + side, left : left + side] = True
    return m


def disc(shape, cy, cx, r):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def test_shifted_squares():
    g = square()
    p = square(left=13)  # 10 x 10 squares overlapping in 10 x 5 = 50 pixels
    assert dice(p, g) == pytest.approx(0.5)
    assert jaccard(p, g) == pytest.approx(50 / 150)
    assert f1(p, g) == pytest.approx(0.5)
    assert conformity(p, g) == pytest.approx((3 * 0.5 - 2) / 0.5)  # -1
    assert rvd(p, g) == 0.0


def test_nested_squares_precision_recall():
    g = square(side=10)  # 100 px
    p = square(side=5)  # 25 px inside g: precision 1, recall 0.25
    assert dice(p, g) == pytest.approx(50 / 125)
    assert jaccard(p, g) == pytest.approx(0.25)
    assert fbeta(p, g, beta2=0.3) == pytest.approx(1.3 * 0.25 / (0.3 + 0.25))
    assert fbeta(p, g, beta2=1.0) == pytest.approx(f1(p, g))
    assert rvd(p, g) == pytest.approx(-0.75)
    assert rvd_abs_percent(p, g) == pytest.approx(75.0)
    assert rvd(g, p) == pytest.approx(3.0)


def test_disc_identity_and_one_pixel():
    g = disc((40, 40), 20, 20, 9)
    assert dice(g, g) == 1.0 and jaccard(g, g) == 1.0 and conformity(g, g) == 1.0
    a = np.zeros((5, 5), bool)
    a[2, 2] = True
    b = np.zeros((5, 5), bool)
    b[2, 3] = True
    assert dice(a, a) == 1.0
    assert dice(a, b) == 0.0 and jaccard(a, b) == 0.0 and f1(a, b) == 0.0
    assert conformity(a, b) == pytest.approx(3 - 2 / CON_DSC_FLOOR)  # -197, finite


def test_conformity_is_monotone_in_dice():
    g = square(side=20)
    values = [conformity(square(side=20, left=8 + s), g) for s in range(0, 21, 2)]
    assert all(np.isfinite(values))
    assert all(a >= b for a, b in zip(values, values[1:], strict=False))


@pytest.mark.parametrize(
    ("case", "overlap", "rvd_value"),
    [("both", 1.0, 0.0), ("pred", 0.0, -1.0), ("gt", 0.0, 25.0)],
)
def test_empty_mask_policy(case, overlap, rvd_value):
    full = square(side=5)  # 25 pixels
    empty = np.zeros_like(full)
    p = empty if case in ("both", "pred") else full
    g = empty if case in ("both", "gt") else full
    for fn in (dice, jaccard, f1, fbeta):
        assert fn(p, g) == overlap
    assert conformity(p, g) == (1.0 if case == "both" else 3 - 2 / CON_DSC_FLOOR)
    assert rvd(p, g) == rvd_value


def test_mae_uses_probabilities():
    g = np.array([[1, 1], [0, 0]], bool)
    p = np.array([[0.9, 0.2], [0.1, 0.0]])
    assert mae(p, g) == pytest.approx((0.1 + 0.8 + 0.1 + 0.0) / 4)
    assert mae(np.round(p * 255).astype(np.uint8), g.astype(np.uint8) * 255) == pytest.approx(
        (abs(230 / 255 - 1) + abs(51 / 255 - 1) + 26 / 255) / 4
    )


def test_input_scales_agree():
    g = square()
    p = np.clip(square(left=11) * 0.8 + 0.1, 0, 1)  # probabilities 0.9 / 0.1
    ref = dice(p > 0.5, g)
    assert dice(p, g.astype(np.uint8) * 255) == ref
    assert dice((p * 255).astype(np.uint8), g.astype(np.float32)) == ref
    # 0-255 maps are binarised at > 128, [0, 1] maps at > 0.5.
    assert dice(np.full((2, 2), 128, np.uint8), np.ones((2, 2), bool)) == 0.0
    assert dice(np.full((2, 2), 129, np.uint8), np.ones((2, 2), bool)) == 1.0


@pytest.mark.parametrize(
    ("pred", "gt", "match"),
    [
        (np.zeros((3, 3)), np.zeros((3, 4)), "same shape"),
        (np.zeros((3,)), np.zeros((3,)), "2-D"),
        (np.full((3, 3), np.nan), np.zeros((3, 3)), "NaN"),
        (np.full((3, 3), -1.0), np.zeros((3, 3)), r"\[0, 1\] or \[0, 255\]"),
        (np.full((3, 3), 300.0), np.zeros((3, 3)), r"\[0, 1\] or \[0, 255\]"),
    ],
)
def test_bad_inputs_raise(pred, gt, match):
    with pytest.raises(ValueError, match=match):
        dice(pred, gt)


def test_fbeta_rejects_bad_beta():
    with pytest.raises(ValueError, match="beta2"):
        fbeta(square(), square(), beta2=0.0)
