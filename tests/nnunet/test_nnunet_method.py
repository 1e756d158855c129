"""nnU-Net planning, preprocessing and sliding-window inference, against hand-worked values."""

import itertools
import json

import jax.numpy as jnp
import numpy as np
import pytest

from ife_jax.nnunet import data as rawdata
from ife_jax.nnunet import inference, plans, preprocessing
from ife_jax.nnunet.fingerprint import Fingerprint, Intensity

nib = pytest.importorskip("nibabel")

IT = Intensity(
    mean=0.0, median=0.0, std=1.0, min=-1.0, max=1.0, percentile_00_5=-1.0, percentile_99_5=1.0
)


def fingerprint(spacings, shapes):
    return Fingerprint(tuple(spacings), tuple(shapes), 1.0, (IT,), ("MR",))


def test_pool_and_conv_isotropic_by_hand():
    # 3-D isotropic 64^3: pool all axes while >= 8: 64 -> 32 -> 16 -> 8 -> 4: 4 poolings.
    pools, strides, kernels, patch = plans.pool_and_conv((1.0, 1.0, 1.0), (64, 64, 64))
    assert pools == (4, 4, 4)
    assert strides == ((1, 1, 1),) + ((2, 2, 2),) * 4
    assert kernels == ((3, 3, 3),) * 5
    assert patch == (64, 64, 64)


def test_pool_and_conv_anisotropic_by_hand():
    # spacing (3, 1, 1), patch 20 x 64 x 64. Step 1: finest 1, axis 0 is 3x -> only y, x pool
    # (kernel 1x3x3); spacing becomes (3, 2, 2). Step 2: 3/2 < 2 -> all three pool, kernel
    # 3x3x3; sizes 10, 16, 16 -> spacing (6, 4, 4). Step 3: all pool; sizes 5, 8, 8. Step 4:
    # axis 0 (5 < 8) stops; y, x pool to 4. Then nothing is >= 8.
    pools, strides, kernels, patch = plans.pool_and_conv((3.0, 1.0, 1.0), (20, 64, 64))
    assert strides == ((1, 1, 1), (1, 2, 2), (2, 2, 2), (2, 2, 2), (1, 2, 2))
    assert kernels == ((1, 3, 3), (3, 3, 3), (3, 3, 3), (3, 3, 3), (3, 3, 3))
    assert pools == (2, 4, 4)
    assert patch == (20, 64, 64)  # 20 is divisible by 2^2


def test_target_spacing_anisotropy_rule():
    # median z spacing 5 > 3 x 1 and median z size 10 x 3 < 100: 10th percentile of z spacings.
    fp = fingerprint(
        [(5.0, 1, 1), (5.0, 1, 1), (4.0, 1, 1), (6.0, 1, 1), (2.0, 1, 1)], [(10, 100, 100)] * 5
    )
    target = plans.fullres_spacing(fp)
    np.testing.assert_allclose(target, [np.percentile([5, 5, 4, 6, 2], 10), 1, 1])
    # Isotropic-enough data keeps the median.
    fp = fingerprint([(2.0, 1, 1), (2.0, 1, 1)], [(50, 100, 100)] * 2)
    np.testing.assert_allclose(plans.fullres_spacing(fp), [2, 1, 1])


def test_feature_map_size_by_hand():
    # 2 stages, 8x8 patch, widths (4, 8), strides 1 then 2, 2 classes:
    # encoder 2*4*64 + 2*8*16 = 768; decoder at 8x8: convs 2*4*64 + transposed 4*64 + logits
    # 2*64 = 896.
    got = plans.feature_map_size((8, 8), (4, 8), ((1, 1), (2, 2)), num_classes=2)
    assert got == 768 + 896


def test_plan_isotropic_small_dataset():
    fp = fingerprint([(1.0, 1.0, 1.0)] * 4, [(40, 48, 56)] * 4)
    p = plans.plan_experiment(fp, dataset_name="D", foreground=(1,))
    c3 = p.configuration("3d_fullres")
    # initial patch 256^3 clipped to the median (40, 48, 56); pooling: 40 -> 20 -> 10 -> 5
    # (3 pools), 48 -> 24 -> 12 -> 6 (3), 56 -> 28 -> 14 -> 7 (3); rounded up to 8s.
    assert c3.patch_size == (40, 48, 56)
    assert c3.strides == ((1, 1, 1),) + ((2, 2, 2),) * 3
    assert c3.features == (32, 64, 128, 256)
    # batch: 5 % of 4 cases' voxels is 0.2 patches -> the minimum 2.
    assert c3.batch_size == 2
    assert p.transpose_forward == (0, 1, 2)
    assert p.normalization == ("zscore",)
    c2 = p.configuration("2d")
    assert c2.patch_size == (48, 56) and c2.batch_dice


def test_2d_batch_cap_counts_whole_volumes():
    # 10 cases of (100, 64, 64) at 1 mm: the 2d patch is (64, 64). Memory alone allows far more
    # than 50 slices; the 5 % cap counts the volumes' voxels, as nnU-Net v2 does:
    # 100 * 64 * 64 * 10 * 0.05 / (64 * 64) = 50 (one slice per case would give 0.5 -> 2).
    fp = fingerprint([(1.0, 1.0, 1.0)] * 10, [(100, 64, 64)] * 10)
    c2 = plans.plan_experiment(fp, dataset_name="D", foreground=(1,)).configuration("2d")
    assert c2.patch_size == (64, 64)
    memory_batch = (
        plans.REFERENCE_VALUE[2]
        / plans.feature_map_size(c2.patch_size, c2.features, c2.strides, num_classes=2)
        * plans.REFERENCE_BATCH[2]
    )
    assert memory_batch > 50
    assert c2.batch_size == 50


def test_plans_json_round_trip_and_bad_field(tmp_path):
    fp = fingerprint([(1.0, 1.0, 1.0)] * 2, [(16, 16, 16)] * 2)
    p = plans.plan_experiment(fp, dataset_name="D", foreground=(1,))
    p.save(tmp_path / "p.json")
    assert plans.Plans.load(tmp_path / "p.json") == p
    d = json.loads((tmp_path / "p.json").read_text())
    d["configurations"][0]["batch_size"] = "two"
    (tmp_path / "p.json").write_text(json.dumps(d))
    with pytest.raises(ValueError, match="batch_size"):
        plans.Plans.load(tmp_path / "p.json")


def _write_case(root, name, img, lab, affine):
    nib.save(nib.Nifti1Image(img, affine), root / "imagesTr" / f"{name}_0000.nii.gz")
    nib.save(nib.Nifti1Image(lab, affine), root / "labelsTr" / f"{name}.nii.gz")


def _dataset(tmp_path, spacing=(1.0, 1.0, 2.0)):
    root = tmp_path / "Dataset003_T"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    aff = np.diag([*spacing, 1.0])
    aff[:3, 3] = (4.0, -2.0, 7.0)
    x, y, z = np.meshgrid(np.arange(14), np.arange(12), np.arange(8), indexing="ij")
    lab = (((x - 7) / 4) ** 2 + ((y - 6) / 3) ** 2 + ((z - 4) / 2) ** 2 < 1).astype(np.uint8)
    lab[1, 1, 1] = 2
    img = (10 + 5 * lab + x).astype(np.float32)
    _write_case(root, "a", img, lab, aff)
    meta = {
        "channel_names": {"0": "CT"},
        "labels": {"background": 0, "organ": 1, "other": 2},
        "file_ending": ".nii.gz",
    }
    (root / "dataset.json").write_text(json.dumps(meta))
    return root, img, lab, aff


def test_reader_keeps_spacing_affine_and_foreground(tmp_path):
    root, img, lab, aff = _dataset(tmp_path)
    ds = rawdata.read_dataset(root)
    fg = rawdata.foreground_values(ds, "organ")
    (vol,) = rawdata.load_cases(ds, fg)
    assert vol.spacing == (2.0, 1.0, 1.0)  # (z, y, x)
    np.testing.assert_array_equal(vol.image[0], img.transpose(2, 1, 0))
    np.testing.assert_array_equal(vol.label, (lab == 1).transpose(2, 1, 0))
    np.testing.assert_allclose(vol.affine, aff)
    with pytest.raises(ValueError, match="'liver' is not a label"):
        rawdata.foreground_values(ds, "liver")


def test_evaluate_surface_distances_use_the_voxel_spacing(tmp_path):
    from ife_jax.metrics.surface import assd, hausdorff95
    from ife_jax.nnunet import run

    # (Z, Y, X) volumes: a 4-voxel cube and its copy two slices further; 5 mm slices.
    g = np.zeros((12, 10, 10), np.uint8)
    g[2:6, 3:7, 3:7] = 1
    p = np.roll(g, 2, axis=0)
    for folder, arr in (("pred", p), ("ref", g)):
        (tmp_path / folder).mkdir()
        img = nib.Nifti1Image(arr.transpose(2, 1, 0), np.diag([0.8, 0.8, 5.0, 1.0]))
        nib.save(img, str(tmp_path / folder / "c.nii.gz"))
    (row,) = run.evaluate(tmp_path / "pred", tmp_path / "ref")
    spacing = tuple(float(np.float32(v)) for v in (5.0, 0.8, 0.8))  # NIfTI keeps float32
    assert row["dice"] == pytest.approx(0.5)  # half of each cube overlaps
    assert row["volume_ref"] == pytest.approx(64 * 0.8 * 0.8 * 5.0 / 1000)
    assert row["hd95"] == hausdorff95(p, g, spacing=spacing)
    assert row["assd"] == assd(p, g, spacing=spacing)
    # The slice spacing is what sets the distance: two slices of 5 mm.
    assert row["hd95"] == pytest.approx(10.0)
    assert row["hd95"] != hausdorff95(p, g, spacing=(0.8, 0.8, 5.0))


def test_bad_files_named_in_one_error(tmp_path):
    root, img, lab, aff = _dataset(tmp_path)
    _write_case(root, "b", img, lab[:-1], aff)  # label shape mismatch
    _write_case(root, "c", img, lab.astype(np.float32) + 0.5, aff)  # non-integer labels
    ds = rawdata.read_dataset(root)
    with pytest.raises(ValueError) as err:
        list(rawdata.load_cases(ds, (1,)))
    assert "b.nii.gz" in str(err.value) and "c.nii.gz" in str(err.value)
    assert "2 bad case(s)" in str(err.value)


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 2.0), (1.0, 1.0, 1.0)])
def test_preprocessing_round_trip(tmp_path, spacing):
    """Predicting the preprocessed labels returns the original label map on the raw grid."""
    root, img, lab, aff = _dataset(tmp_path, spacing)
    ds = rawdata.read_dataset(root)
    (vol,) = rawdata.load_cases(ds, (1,))
    fp = __import__("ife_jax.nnunet.fingerprint", fromlist=["x"]).compute_fingerprint(
        [vol], ds.channel_names
    )
    p = plans.plan_experiment(fp, dataset_name=ds.name, foreground=(1,))
    p = plans.Plans(
        **{
            **p.__dict__,
            "configurations": tuple(
                plans.ConfigurationPlan(
                    **{**c.__dict__, "spacing": tuple(s / 2 for s in c.spacing)}
                )
                for c in p.configurations
            ),
        }
    )  # resample to half the spacing and back
    data, seg, props = preprocessing.preprocess_case(vol, p, "3d_fullres")
    assert seg.shape == tuple(2 * n for n in vol.label.shape)
    probs = np.stack([seg == 0, seg == 1]).astype(np.float32)
    back = np.argmax(preprocessing.restore_probabilities(probs, props, p), 0)
    np.testing.assert_array_equal(back, vol.label)
    # CT normalisation: clip to the foreground percentiles, then foreground z-score.
    it = p.intensity[0]
    assert np.isclose(data.max(), (it.percentile_99_5 - it.mean) / it.std, atol=1e-3)


def test_window_starts_by_hand():
    assert inference.window_starts(10, 10) == [0]
    assert inference.window_starts(8, 10) == [0]
    # (20 - 8) / 4 = 3 -> 4 windows at 0, 4, 8, 12.
    assert inference.window_starts(20, 8) == [0, 4, 8, 12]
    # (21 - 8) / 4 = 3.25 -> 5 windows, step 13 / 4 = 3.25.
    assert inference.window_starts(21, 8) == [0, 3, 6, 10, 13]


def test_gaussian_weights_border_sums():
    patch = (6, 8)
    g = inference.gaussian_weights(patch)
    assert g.max() == 1.0 and g.min() > 0 and g[3, 4] == 1.0
    size = (11, 13)
    total = np.zeros(size)
    for sy, sx in itertools.product(inference.window_starts(11, 6), inference.window_starts(13, 8)):
        total[sy : sy + 6, sx : sx + 8] += g
    # Every voxel (corners included) is covered; the corner gets exactly the corner weight of
    # the single window that covers it.
    assert total.min() > 0
    assert total[0, 0] == pytest.approx(g[0, 0])
    assert total[-1, -1] == pytest.approx(g[-1, -1])


@pytest.mark.parametrize("mirror", [True, False])
@pytest.mark.parametrize("size", [(9, 11), (4, 5, 7)])
def test_sliding_window_of_constant_network(mirror, size):
    patch = (4,) * len(size) if len(size) == 3 else (6, 8)
    value = jnp.array([0.25, -1.5])

    def constant(x):
        return jnp.broadcast_to(value, (*x.shape[:-1], 2))

    out = inference.sliding_window(
        constant,
        np.random.default_rng(0).normal(size=(1, *size)),
        patch,
        num_classes=2,
        mirror=mirror,
    )
    assert out.shape == (2, *size)
    np.testing.assert_allclose(out[0], 0.25, rtol=1e-6)
    np.testing.assert_allclose(out[1], -1.5, rtol=1e-6)


def test_sliding_window_equals_whole_image_for_a_pointwise_network():
    """A network acting per voxel gives the same output windowed as on the whole image."""
    img = np.random.default_rng(1).normal(size=(1, 10, 13)).astype(np.float32)

    def pointwise(x):
        return jnp.concatenate([x, 2 * x + 1], -1)

    out = inference.sliding_window(pointwise, img, (4, 6), num_classes=2, mirror=True)
    np.testing.assert_allclose(out[0], img[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out[1], 2 * img[0] + 1, rtol=1e-5, atol=1e-5)
