"""Evaluation report: records, tables, paired t-test, CSV round trip and figures."""

import numpy as np
import pytest
from scipy import stats

from ife_jax.metrics import METRIC_KEYS
from ife_jax.metrics.report import (
    compare_models,
    empty_counts,
    evaluate_masks,
    format_table,
    overlay,
    paired_ttest,
    parse_group,
    read_csv,
    summarize,
    write_report,
)


def square(shape=(24, 24), top=6, left=6, side=10):
    m = np.zeros(shape, bool)
    m[top : top + side, left : left + side] = True
    return m


def make_pairs(shift):
    g = square()
    names = ["CT_Liver_1.png", "CT_Liver_2.png", "MRI_Brain_1.png", "MRI_Heart_3.png"]
    pairs = [(n, square(left=6 + shift + i % 2), g) for i, n in enumerate(names)]
    pairs.append(("US_Kidney_9.png", np.zeros_like(g), np.zeros_like(g)))  # both empty
    return pairs


@pytest.fixture(scope="module")
def records():
    a = evaluate_masks(make_pairs(3), model="unet", progress=False)
    b = evaluate_masks(make_pairs(1), model="unet+ife", progress=False)
    return a + b


def test_parse_group():
    assert parse_group("data/CT_Liver_12.png") == ("CT", "Liver")
    assert parse_group("Xray.png") == ("Xray", "unknown")


def test_records_fields(records):
    r = records[0]
    assert (r["image_id"], r["modality"], r["anatomy"], r["model"]) == (
        "CT_Liver_1.png", "CT", "Liver", "unet"
    )  # fmt: skip
    assert r["dsc"] == pytest.approx(0.7)  # 10 x 10 squares shifted by 3
    assert set(METRIC_KEYS) <= set(r)


def test_summary_and_table(records):
    rows = summarize(records)
    a = [r for r in rows if r["model"] == "unet"][0]
    dscs = [0.7, 0.6, 0.7, 0.6, 1.0]
    assert a["n"] == 5
    assert a["dsc"][0] == pytest.approx(np.mean(dscs))
    assert a["dsc"][1] == pytest.approx(np.std(dscs, ddof=1))
    text = format_table(records)
    assert "DSC(%)" in text and "MAE(%)" in text
    assert f"{100 * np.mean(dscs):.2f} ± {100 * np.std(dscs, ddof=1):.2f}" in text
    by_mod = summarize(records, by="modality")
    assert {r["group"] for r in by_mod} == {"CT", "MRI", "US"}
    assert "Liver" in format_table(records, by="anatomy")


def test_empty_counts(records):
    assert empty_counts(records)["unet"] == {"none": 4, "both": 1, "pred": 0, "gt": 0}


def test_paired_ttest_matches_scipy(records):
    rows = compare_models(records, "unet", "unet+ife")
    a = [r["dsc"] for r in records if r["model"] == "unet"]
    b = [r["dsc"] for r in records if r["model"] == "unet+ife"]
    assert rows[0]["n"] == 5
    assert rows[0]["p"] == pytest.approx(stats.ttest_rel(a, b).pvalue)
    assert rows[0]["diff"] == pytest.approx(np.mean(b) - np.mean(a))
    assert rows[0]["significant"] == (rows[0]["p"] < 0.05)
    assert paired_ttest([0.5, 0.6], [0.5, 0.6]) == 1.0
    assert np.isnan(paired_ttest([0.5], [0.6]))


def test_write_report(tmp_path, records):
    g = square()
    overlays = {
        "images": [np.random.default_rng(0).random((24, 24))] * 2,
        "gts": [g, g],
        "preds": {"unet": [square(left=9)] * 2, "unet+ife": [square(left=7)] * 2},
        "titles": ["a", "b"],
    }
    names = ["unet", "unet+ife"]
    paths = write_report(records, str(tmp_path), model_names=names, overlays=overlays)
    back = read_csv(paths["per_image"])
    assert len(back) == len(records)
    assert back[0]["dsc"] == records[0]["dsc"]  # full precision round trip
    text = open(paths["summary_txt"]).read()
    for part in ("By modality", "By anatomy", "Empty-mask cases", "Paired comparison"):
        assert part in text
    for key in ("dsc_by_group", "overlays"):
        with open(paths[key], "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="no records"):
        write_report(records, str(tmp_path), model_names=["nnunet"])


def test_overlay_colours():
    img = np.zeros((2, 2))
    p = np.array([[1, 0], [1, 0]], bool)
    g = np.array([[1, 1], [0, 0]], bool)
    rgb = overlay(img, p, g, alpha=1.0)
    np.testing.assert_array_equal(rgb[0, 0], [1, 1, 0])  # both: yellow
    np.testing.assert_array_equal(rgb[1, 0], [1, 0, 0])  # prediction only: red
    np.testing.assert_array_equal(rgb[0, 1], [0, 1, 0])  # ground truth only: green
    np.testing.assert_array_equal(rgb[1, 1], [0, 0, 0])


def test_write_report_compares_every_model_with_the_baseline(tmp_path, records):
    third = evaluate_masks(make_pairs(2), model="unet+c", progress=False)
    both = records + third
    text = open(write_report(both, str(tmp_path), baseline="unet")["summary_txt"]).read()
    for other in ("unet+ife", "unet+c"):
        # overall, by modality and by anatomy
        assert text.count(f"Paired comparison on DSC(%): {other} vs unet ") == 3
    want = f"{100 * np.mean([r['dsc'] for r in third]):.2f}"
    overall = text.split("Paired comparison on DSC(%): unet+c vs unet ")[1].splitlines()[2]
    assert overall.split()[0] == "all" and overall.split()[3] == want
    text = open(write_report(both, str(tmp_path), baseline="unet+c")["summary_txt"]).read()
    assert text.count("vs unet+c ") == 6 and "vs unet " not in text
    with pytest.raises(ValueError, match="baseline 'nnunet'"):
        write_report(both, str(tmp_path), baseline="nnunet")


def test_overlay_grid_uses_the_scores_it_is_given(tmp_path, monkeypatch):
    from ife_jax.metrics import report

    def no_recompute(*args, **kwargs):
        raise AssertionError("the overlay grid recomputed a metric it was given")

    monkeypatch.setattr(report, "compute_all", no_recompute)
    g = square()
    path = tmp_path / "grid.png"
    report.overlay_grid([g.astype(np.uint8) * 255], [g], {"m": [g]}, str(path), dsc={"m": [1.0]})
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="dsc must hold 1 values"):
        report.overlay_grid([g], [g], {"m": [g]}, str(path), dsc={"m": []})


def test_overlay_of_a_uint8_image_keeps_its_scale_and_gt_is_optional():
    img = np.array([[[10, 20, 30], [200, 100, 0]]], np.uint8)
    p = np.array([[True, False]])
    rgb = overlay(img, p, alpha=0.5)
    np.testing.assert_allclose(rgb[0, 1], img[0, 1] / 255.0)  # untouched, not min-max scaled
    np.testing.assert_allclose(rgb[0, 0], 0.5 * img[0, 0] / 255.0 + [0.5, 0, 0])  # red only
