"""compute_all under both conventions, against hand-computed values for every column."""

import math

import numpy as np
import pytest

from ife_jax.metrics import (
    METRIC_KEYS,
    binarize_prediction,
    compute_all,
    dice,
    empty_case,
    hce,
    jaccard,
)


def square(shape=(20, 20), top=5, left=5, side=10):
    m = np.zeros(shape, bool)
    m[top : top + side, left : left + side] = True
    return m


def shifted_case():
    """gt: 10 x 10 square; prediction: probabilities 0.3 on a copy shifted by 3 columns, 0.1
    elsewhere. Standard (> 0.5) sees an empty prediction; the paper's min-max normalisation
    sees the shifted square: TP 70, |P| = |G| = 100."""
    g = square()
    p = np.where(square(left=8), 0.3, 0.1)
    return p, g


def test_keys_and_order():
    p, g = shifted_case()
    for conv in ("standard", "paper"):
        out = compute_all(p, g, convention=conv)
        assert tuple(out) == METRIC_KEYS
        assert all(isinstance(v, float) and math.isfinite(v) for v in out.values())


def test_paper_convention_by_hand():
    p, g = shifted_case()
    out = compute_all(p, g, convention="paper")
    # Shifted squares by 3: every directed mean is 54/36 = 1.5 (left side 10 x 3, the two
    # near-corner rows 2 + 1 each, the far side 1,2,3,3,3,3,2,1), HD = 3.
    expected = {
        "dsc": 0.7,
        "jc": 70 / 130,
        "con": (3 * 0.7 - 2) / 0.7,
        "f1": 1.3 * 0.7 * 0.7 / (0.3 * 0.7 + 0.7 + 1e-4),
        "mae": 60 / 400,
        "hd": 3.0,
        "asd": 1.5,
        "rvd": 0.0,
        "hce": float(hce(square(left=8), g, size=64)),
    }
    for k, v in expected.items():
        assert out[k] == pytest.approx(v, rel=1e-6), k


def test_standard_convention_by_hand():
    g = square()
    p = np.where(square(left=8), 0.8, 0.1)  # binarises to the shifted square
    out = compute_all(p, g)
    assert out["dsc"] == pytest.approx(0.7)
    assert out["jc"] == pytest.approx(70 / 130)
    assert out["con"] == pytest.approx(3 - 2 / 0.7)
    assert out["f1"] == pytest.approx(0.7)
    # MAE on probabilities: 70 px at |0.8-1|, 30 px at 0.8 (FP), 30 px at |0.1-1| (FN),
    # 270 px at 0.1
    assert out["mae"] == pytest.approx((70 * 0.2 + 30 * 0.8 + 30 * 0.9 + 270 * 0.1) / 400)
    assert out["hd"] == pytest.approx(3.0)
    assert out["asd"] == pytest.approx(1.5)
    assert out["rvd"] == 0.0
    assert out["hce"] == hce(square(left=8), g)


def test_conventions_differ_where_documented():
    g = square(side=10)
    p = square(side=5)  # inside g: precision 1, recall 0.25, |P| = 25
    std = compute_all(p, g)
    pap = compute_all(p, g, convention="paper")
    assert std["f1"] == pytest.approx(2 * 0.25 / 1.25)
    assert pap["f1"] == pytest.approx(1.3 * 0.25 / (0.3 + 0.25 + 1e-4))
    assert std["rvd"] == pytest.approx(-0.75)
    assert pap["rvd"] == pytest.approx(75.0)
    assert pap["mae"] == pytest.approx(75 / 400)  # a missed pixel counts 1, no uint8 wrap
    # Con below DSC 0.01: paper 0, standard the clamped floor.
    a = np.zeros((200, 200), bool)
    a[:100, :100] = True
    b = a.copy()
    b[99, 99] = True
    b[:100, :100] = False
    b[99, 99] = True  # one pixel, inside a: DSC = 2/10001
    assert compute_all(b, a, convention="paper")["con"] == 0.0
    assert compute_all(b, a)["con"] == pytest.approx(-197.0)


def test_paper_asd_averages_directed_means():
    a = square(shape=(20, 20), top=5, left=5, side=10)
    b = square(shape=(20, 20), top=3, left=3, side=14)
    r5, r8 = math.sqrt(5), math.sqrt(8)
    mean_ba = (80 + 8 * r5 + 4 * r8) / 52
    assert compute_all(a, b, convention="paper")["asd"] == pytest.approx((2 + mean_ba) / 2)
    assert compute_all(a, b)["asd"] == pytest.approx((72 + 52 * mean_ba) / 88)


def test_paper_min_max_binarisation():
    # normalised: 0, .55, .75, 1 -> >= 0.5: 3 px (exactly 0.5 would fall short by the 1e-8)
    p = np.array([[0.2, 0.31], [0.35, 0.4]])
    np.testing.assert_array_equal(
        binarize_prediction(p, convention="paper"), [[False, True], [True, True]]
    )
    assert not binarize_prediction(np.full((3, 3), 0.9), convention="paper").any()
    assert binarize_prediction(np.full((3, 3), 0.9)).all()


@pytest.mark.parametrize("spacing", [1.0, (0.5, 2.0)])
def test_empty_cases_standard(spacing):
    full = square(shape=(30, 40), side=20)  # 400 px
    empty = np.zeros_like(full)
    sy, sx = (spacing, spacing) if np.isscalar(spacing) else spacing
    diag = math.hypot(30 * sy, 40 * sx)
    both = compute_all(empty, empty, spacing=spacing)
    assert both == {
        "con": 1.0, "dsc": 1.0, "jc": 1.0, "f1": 1.0, "hce": 0.0, "mae": 0.0,
        "hd": 0.0, "asd": 0.0, "rvd": 0.0,
    }  # fmt: skip
    miss = compute_all(empty, full, spacing=spacing)
    assert (miss["dsc"], miss["jc"], miss["f1"], miss["con"]) == (0.0, 0.0, 0.0, -197.0)
    assert miss["hd"] == pytest.approx(diag) and miss["asd"] == pytest.approx(diag)
    assert miss["rvd"] == -1.0 and miss["mae"] == pytest.approx(400 / 1200)
    assert miss["hce"] > 0
    extra = compute_all(full, empty, spacing=spacing)
    assert extra["hd"] == pytest.approx(diag) and extra["rvd"] == 400.0
    assert extra["hce"] == 1.0  # one false region, removed with one click
    assert compute_all(square(shape=(30, 40)), empty)["hce"] == 0.0  # 10 px wide: relaxed
    assert empty_case(empty, empty) == "both"
    assert empty_case(empty, full) == "pred"
    assert empty_case(full, empty) == "gt"
    assert empty_case(full, full) == "none"


def test_empty_cases_paper():
    full = square(shape=(30, 40))
    empty = np.zeros_like(full)
    assert set(compute_all(empty, empty, convention="paper").values()) == {0.0}
    miss = compute_all(np.full((30, 40), 0.7), full, convention="paper")  # constant -> empty
    assert miss["dsc"] == miss["jc"] == miss["f1"] == miss["con"] == 0.0
    assert miss["hd"] == miss["asd"] == 0.0
    assert miss["rvd"] == 100.0
    extra = compute_all(full, empty, convention="paper")
    assert extra["hd"] == extra["asd"] == extra["dsc"] == 0.0
    assert extra["rvd"] == 100.0 * 100


def test_agrees_with_single_metrics_on_random_masks():
    rng = np.random.default_rng(3)
    for _ in range(5):
        p = rng.random((24, 24))
        g = rng.random((24, 24)) < 0.4
        out = compute_all(p, g, spacing=(1.0, 1.5))
        assert out["dsc"] == pytest.approx(dice(p, g))
        assert out["jc"] == pytest.approx(jaccard(p, g))


def test_bad_convention():
    with pytest.raises(ValueError, match="convention"):
        compute_all(square(), square(), convention="medpy")


def overshoot_case(dtype):
    """gt: 10 x 10 square; prediction: 0.9 on a copy shifted by 3 columns (one pixel of it
    1 ulp above 1 after float rounding), 0.1 elsewhere: TP 70, |P| = |G| = 100, DSC 0.7."""
    g = square()
    p = np.where(square(left=8), 0.9, 0.1).astype(dtype)
    exact = p.copy()
    exact[5, 8] = 1.0
    p[5, 8] = np.nextafter(dtype(1.0), dtype(2.0))
    return p, exact, g


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("convention", ["standard", "paper"])
def test_probability_map_overshooting_1_by_rounding_is_read_as_probabilities(dtype, convention):
    p, exact, g = overshoot_case(dtype)
    assert p.max() > 1
    out = compute_all(p, g, convention=convention)
    assert out["dsc"] == pytest.approx(0.7, abs=1e-12)
    assert out == compute_all(exact, g, convention=convention)  # the overshoot is clipped
    p64 = np.where(square(left=8), 0.9, 0.1)
    p64[5, 8] = 1.0000001  # the reported case
    assert compute_all(p64, g, convention=convention)["dsc"] == pytest.approx(0.7, abs=1e-12)


def test_float_map_on_the_0_255_scale_reads_like_its_uint8_version():
    p, _, g = overshoot_case(np.float64)
    p255 = np.round(np.clip(p, 0, 1) * 255)
    assert compute_all(p255, g) == compute_all(p255.astype(np.uint8), g)
    assert compute_all(p255, g)["dsc"] == pytest.approx(0.7, abs=1e-12)  # 230 > 128


@pytest.mark.parametrize(
    "gt",
    [
        square().astype(np.uint8) * 2,  # {0, 2}: the reported case
        np.where(square(), 255, 0) - np.where(square(left=6), 127, 0),  # anti-aliased grey
        square() * 0.5,  # a probability map
        square().astype(np.float32) + square(side=3),  # labels {0, 1, 2}
    ],
)
def test_non_binary_ground_truth_is_an_error_naming_its_values(gt):
    pred = square()
    values = ", ".join(f"{v:g}" for v in np.unique(gt))
    message = r"gt must be a binary mask .* got values \{" + values + r"\}"
    for call in (
        lambda: compute_all(pred, gt),
        lambda: compute_all(pred, gt, convention="paper"),
        lambda: dice(pred, gt),
        lambda: hce(pred, gt),
        lambda: empty_case(pred, gt),
    ):
        with pytest.raises(ValueError, match=message):
            call()


def test_every_binary_ground_truth_form_reads_alike():
    p, _, g = overshoot_case(np.float64)
    want = {conv: compute_all(p, g, convention=conv) for conv in ("standard", "paper")}
    for form in (g.astype(np.uint8), g.astype(np.float32), g.astype(np.uint8) * 255, g * 255.0):
        for conv in ("standard", "paper"):
            assert compute_all(p, form, convention=conv) == want[conv]
    full = np.ones_like(g)
    assert compute_all(p, full.astype(np.uint8) * 255) == compute_all(p, full)  # all 255
