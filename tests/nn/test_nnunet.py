"""The 2-D nnU-Net planner (hand-worked plans, fingerprint, JSON) and the network it builds."""

import dataclasses
import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _models import count as _count
from _models import random_variables
from PIL import Image

from ife_jax.losses import structure_loss
from ife_jax.nn import NNUNet
from ife_jax.nn.nnunet import deep_supervision_weights
from ife_jax.nnunet.image_plans import (
    REFERENCE_ACTIVATIONS,
    ChannelIntensity,
    Fingerprint,
    NNUNetPlan,
    activation_count,
    compute_fingerprint,
    folder_pairs,
    format_plan,
    normalize_image,
    plan_dataset,
    plan_from_fingerprint,
)


def _fp(median, n, channels=1):
    stats = ChannelIntensity(mean=100.0, std=20.0, min=0.0, max=255.0,
                             percentile_00_5=10.0, percentile_99_5=240.0)  # fmt: skip
    return Fingerprint(
        num_images=n,
        num_channels=channels,
        median_shape=median,
        min_shape=median,
        max_shape=median,
        foreground_fraction=0.2,
        intensity=(stats,) * channels,
    )


def test_reference_network_gets_nnunets_reference_batch():
    # 512 x 512: 7 poolings to 4 x 4, 8 stages, widths capped at 512, batch 12 in 8 GB.
    # Activations: sum_s P_s F_s = 16,424,960; encoder 6x that, decoder 9x (all but the
    # bottleneck's 4*4*512 = 8192): 98,549,760 + 147,750,912.
    assert REFERENCE_ACTIVATIONS == 246_300_672
    plan = plan_from_fingerprint(_fp((512, 512), 1000))
    assert plan.patch_size == (512, 512)
    assert plan.features == (32, 64, 128, 256, 512, 512, 512, 512)
    assert plan.batch_size == 12


def test_plan_small_square_images():
    plan = plan_from_fingerprint(_fp((64, 64), 200))
    # 64 -> 32 -> 16 -> 8 -> 4: four poolings, five stages.
    assert plan.patch_size == (64, 64)
    assert plan.strides == ((1, 1), (2, 2), (2, 2), (2, 2), (2, 2))
    assert plan.features == (32, 64, 128, 256, 512)
    # P_s F_s = 131072, 65536, 32768, 16384, 8192 (sum 253,952): 6 x 253,952 + 9 x 245,760.
    assert activation_count(plan.patch_size, plan.features, plan.strides) == 3_735_552
    # Memory alone would allow floor(12 * 246,300,672 / 3,735,552) = 791; 5 % of 200 images
    # of the patch's size caps it at 10.
    assert plan.batch_size == 10
    assert plan.ife_levels == (1, 2) and plan.ife_ratios == (0.5, 0.5)  # of 4 skips
    assert plan.normalization == "zscore" and plan.in_channels == 1


def test_plan_large_rectangular_images():
    fp = _fp((1024, 768), 500, channels=3)
    plan = plan_from_fingerprint(fp, memory_gb=8)
    # 1024 pools 8 times (to 4), 768 seven times (6 < 8 stops it): 9 stages, the last
    # stride-2 along H only. Widths 32 ... 512 then capped.
    assert plan.patch_size == (1024, 768)
    assert plan.strides == ((1, 1),) + ((2, 2),) * 7 + ((2, 1),)
    assert plan.features == (32, 64, 128, 256, 512, 512, 512, 512, 512)
    # sum P_s F_s = 49,287,168 -> A = 6 x 49,287,168 + 9 x 49,274,880 = 739,196,928;
    # floor(12 x 246,300,672 / 739,196,928) = floor(3.998) = 3 (the 5 % cap is 25).
    assert activation_count(plan.patch_size, plan.features, plan.strides) == 739_196_928
    assert plan.batch_size == 3
    assert plan.in_channels == 3 and plan.ife_levels == (3, 4)  # of 8 skips

    # With 4 GB a batch of 2 does not fit (1.999): the patch shrinks along the last axis
    # (ties) by its divisibility step 2^7 = 128, to 1024 x 640, which pools 7 times too.
    # A = 6 x 41,072,640 + 9 x 41,062,400 = 615,997,440: floor(6 x 246,300,672 / A) = 2.
    small = plan_from_fingerprint(fp, memory_gb=4)
    assert small.patch_size == (1024, 640)
    assert small.strides == plan.strides and small.features == plan.features
    assert activation_count(small.patch_size, small.features, small.strides) == 615_997_440
    assert small.batch_size == 2


def test_plan_tiny_images():
    plan = plan_from_fingerprint(_fp((20, 12), 60), modality="CT")
    # 20 -> 10 -> 5 (two poolings); 12 -> 6 (one): 3 stages, the last stride (2, 1).
    assert plan.patch_size == (20, 12)
    assert plan.strides == ((1, 1), (2, 2), (2, 1))
    assert plan.features == (32, 64, 128)
    # Memory allows thousands; 5 % of 60 images of 20 x 12 is 3 patches.
    assert plan.batch_size == 3
    assert plan.ife_levels == (0, 1)
    assert plan.normalization == "ct"
    # Patches that are not a multiple of the pooling are rounded up: 21 x 13 -> 24 x 14.
    odd = plan_from_fingerprint(_fp((21, 13), 60))
    assert odd.patch_size == (24, 14) and odd.strides == plan.strides


def test_plan_json_round_trip_and_editing(tmp_path):
    plan = plan_from_fingerprint(_fp((1024, 768), 500, channels=3))
    path = tmp_path / "plan.json"
    plan.save(path)
    assert NNUNetPlan.load(path) == plan
    d = json.loads(path.read_text())
    d["batch_size"], d["ife_levels"], d["ife_ratios"] = 5, [2], [0.75]
    path.write_text(json.dumps(d))
    edited = NNUNetPlan.load(path)
    assert edited == dataclasses.replace(plan, batch_size=5, ife_levels=(2,), ife_ratios=(0.75,))
    with pytest.raises(ValueError, match=r"unknown field\(s\) colour for NNUNetPlan"):
        NNUNetPlan.from_dict({**d, "colour": 1})
    with pytest.raises(ValueError, match="ife_levels"):
        dataclasses.replace(plan, ife_levels=(8,), ife_ratios=(0.5,))
    with pytest.raises(ValueError, match="divisible"):
        dataclasses.replace(plan, patch_size=(1000, 768))
    text = format_plan(plan)
    assert "patch size        : 1024x768" in text and "batch size        : 3" in text
    assert "ratio 0.5" in text and "(bottleneck)" in text


def _pairs():
    a = np.full((10, 10), 7.0)
    ma = np.zeros((10, 10), np.uint8)
    ma[:5, :4] = 255  # 20 foreground pixels of value 7
    b = np.arange(600, dtype=np.float64).reshape(20, 30)
    mb = np.zeros((20, 30))
    mb[0, :10] = 1.0  # values 0..9
    c = np.zeros((40, 20))
    mc = np.zeros((40, 20))  # no foreground
    return [(a, ma), (b, mb), (c, mc)]


def test_fingerprint_by_hand():
    fp = compute_fingerprint(iter(_pairs()))
    assert fp.num_images == 3 and fp.num_channels == 1
    assert fp.median_shape == (20, 20) and fp.min_shape == (10, 10) and fp.max_shape == (40, 30)
    assert fp.foreground_fraction == pytest.approx((0.2 + 10 / 600 + 0.0) / 3)
    fg = np.array([7.0] * 20 + list(range(10)))
    (it,) = fp.intensity
    assert it.mean == pytest.approx(fg.mean()) and it.std == pytest.approx(fg.std())
    assert it.min == 0.0 and it.max == 9.0
    # Fewer foreground pixels than samples_per_image: the sample is all of them.
    lo, hi = np.percentile(fg, [0.5, 99.5])
    assert (it.percentile_00_5, it.percentile_99_5) == pytest.approx((lo, hi))
    with pytest.raises(ValueError, match="no \\(image, mask\\) pairs"):
        compute_fingerprint([])
    with pytest.raises(ValueError, match="differ in size"):
        compute_fingerprint([(np.zeros((4, 4)), np.zeros((4, 5)))])


def test_folder_pairs_match_by_name(tmp_path):
    for name, size in (("CT_Liver_1", (8, 6)), ("CT_Liver_10", (12, 10)), ("orphan", (5, 5))):
        Image.fromarray(np.full(size, 9, np.uint8)).save(tmp_path / f"{name}.png")
    for name, size in (("CT_Liver_1", (8, 6)), ("CT_Liver_10", (12, 10))):
        m = np.zeros(size, np.uint8)
        m[0, 0] = 255
        Image.fromarray(m).save(tmp_path / f"{name}_mask.png")
    pairs = list(folder_pairs(tmp_path))
    assert [p[0].shape for p in pairs] == [(8, 6, 3), (12, 10, 3)]  # read as the model sees them
    assert all(i.shape[:2] == m.shape and set(np.unique(m)) == {0, 1} for i, m in pairs)
    plan = plan_dataset(tmp_path)
    assert plan.num_images == 2 and plan.median_shape == (10, 8)


def test_normalisation_schemes():
    img = np.array([[0.0, 50.0], [100.0, 250.0]])
    plan = plan_from_fingerprint(_fp((64, 64), 10))
    z = normalize_image(img, plan)
    np.testing.assert_allclose(z, (img - img.mean()) / img.std(), rtol=1e-6)
    ct = normalize_image(img, dataclasses.replace(plan, normalization="ct"))
    np.testing.assert_allclose(ct, (np.clip(img, 10, 240) - 100) / 20, rtol=1e-6)
    rgb = normalize_image(img, dataclasses.replace(plan, normalization="rgb_to_0_1"))
    np.testing.assert_allclose(rgb, img / 255, rtol=1e-6)


def _expected_params(plan, ratios):
    """Parameters of the plan's network, counted the slow obvious way."""
    total, cin = 0, plan.in_channels
    for f in plan.features:
        for _ in range(plan.encoder_convs):
            total += 9 * cin * f + f + 2 * f  # conv + bias, instance-norm scale and bias
            cin = f
    heads = len(deep_supervision_weights(plan.num_stages, plan.deep_supervision))
    for s in range(plan.num_stages - 2, -1, -1):
        f, below, st = plan.features[s], plan.features[s + 1], plan.strides[s + 1]
        total += st[0] * st[1] * below * f + f  # transposed convolution
        cin = 2 * f + int(ratios.get(s, 0) * f)
        for _ in range(plan.decoder_convs):
            total += 9 * cin * f + 3 * f
            cin = f
        if s < heads:
            total += f * plan.num_classes + plan.num_classes
    return total


@pytest.mark.parametrize("ife", [None, "entropy"])
def test_network_matches_the_plan(ife):
    plan = plan_from_fingerprint(_fp((1024, 768), 500, channels=3))
    model = NNUNet(plan, ife=ife)
    x = jnp.zeros((2, *plan.patch_size, 3))
    v = jax.eval_shape(lambda: model.init(jax.random.key(0), x))
    ratios = dict(zip(plan.ife_levels, plan.ife_ratios, strict=True)) if ife else {}
    n = _count(v["params"])
    assert n == _expected_params(plan, ratios)
    assert n == (58_650_535 if ife is None else 58_650_535 + 9 * (128 * 256 + 256 * 512))
    p = v["params"]
    for s, f in enumerate(plan.features):
        assert p[f"enc{s}_0"]["conv"]["kernel"].shape[-1] == f
    assert p["up7"]["kernel"].shape == (2, 1, 512, 512)  # the stride-(2, 1) stage
    assert p["dec3_0"]["conv"]["kernel"].shape == (3, 3, 512 + (128 if ife else 0), 256)
    outs = jax.eval_shape(lambda v: model.apply(v, x, train=True), v)
    # 9 stages: 8 decoder outputs, the coarsest weighted 0 and dropped.
    assert [o.shape[1:3] for o in outs] == [
        (1024, 768), (512, 384), (256, 192), (128, 96), (64, 48), (32, 24), (16, 12)
    ]  # fmt: skip
    w = np.array([1, 1 / 2, 1 / 4, 1 / 8, 1 / 16, 1 / 32, 1 / 64])
    np.testing.assert_allclose(model.output_weights, w / w.sum())
    odd = jnp.zeros((1, 300, 200, 3))
    assert jax.eval_shape(lambda v: model.apply(v, odd), v).shape == (1, 300, 200, 1)
    with pytest.raises(ValueError, match="divisible"):
        jax.eval_shape(lambda v: model.apply(v, odd, train=True), v)


def test_a_zero_plan_ratio_switches_ife_off_on_that_skip():
    base = plan_from_fingerprint(_fp((1024, 768), 500, channels=3))
    plan = dataclasses.replace(base, ife_ratios=(base.ife_ratios[0], 0.0))
    x = jnp.zeros((1, *plan.patch_size, 3))
    v = jax.eval_shape(lambda: NNUNet(plan, ife="entropy").init(jax.random.key(0), x))
    n = _count(v["params"])
    assert n == _expected_params(plan, {plan.ife_levels[0]: plan.ife_ratios[0]})
    # Only the skip of the first IFE level (256 channels at ratio 0.5) widens its decoder conv.
    assert (plan.ife_levels, plan.features[plan.ife_levels[0]]) == ((3, 4), 256)
    assert n == 58_650_535 + 9 * 128 * 256


def test_deep_supervision_weights():
    assert deep_supervision_weights(2) == (1.0,)
    assert deep_supervision_weights(3) == (1.0,)
    assert deep_supervision_weights(4) == pytest.approx((2 / 3, 1 / 3))
    assert deep_supervision_weights(8, deep_supervision=False) == (1.0,)


def test_one_train_step_reduces_the_loss():
    plan = NNUNetPlan(
        patch_size=(32, 32),
        batch_size=2,
        features=(8, 16, 32, 64),
        strides=((1, 1), (2, 2), (2, 2), (2, 2)),
        ife_levels=(1, 2),
        ife_ratios=(0.5, 0.5),
    )
    model = NNUNet(plan, ife="entropy")
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(2, 32, 32, 1)), jnp.float32)
    yy, xx = np.mgrid[:32, :32]
    m = ((yy - 14) ** 2 + (xx - 17) ** 2 < 8**2).astype(np.float32)
    masks = jnp.asarray(np.stack([m, m.T])[..., None])
    params = random_variables(model, x.shape)["params"]
    tx = optax.adam(1e-3)

    def loss_fn(params, x, masks):
        outs = model.apply({"params": params}, x, train=True)
        assert [o.shape[1] for o in outs] == [32, 16]
        total = 0.0
        for w, o in zip(model.output_weights, outs, strict=True):
            target = jax.image.resize(masks, o.shape, "linear")
            total = total + w * structure_loss(o, target)
        return total

    @jax.jit
    def step(params, opt_state, x, masks):
        loss, grads = jax.value_and_grad(loss_fn)(params, x, masks)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    params1, _, loss0 = step(params, tx.init(params), x, masks)
    _, _, loss1 = step(params1, tx.init(params1), x, masks)
    assert np.isfinite(loss0) and float(loss1) < float(loss0)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ({"batch_size": "4"}, r"batch_size: expected int; got '4'"),
        ({"features": [4.5, 8]}, r"features\[0\]: expected int; got 4.5"),
        ({"intensity": [{"mean": 0.0}]}, r"intensity\[0\]: ChannelIntensity needs the field"),
        ({"deep_supervision": "yes"}, r"deep_supervision: expected bool; got 'yes'"),
    ],
)
def test_plan_file_with_a_wrongly_typed_field_names_file_and_field(tmp_path, edit, message):
    path = tmp_path / "plan.json"
    plan_from_fingerprint(_fp((64, 64), 20)).save(path)
    path.write_text(json.dumps({**json.loads(path.read_text()), **edit}))
    with pytest.raises(ValueError, match=re.escape(str(path)) + ": " + message):
        NNUNetPlan.load(path)
    path.write_text("{not json")
    with pytest.raises(ValueError, match=re.escape(str(path)) + ": cannot read the plan"):
        NNUNetPlan.load(path)


def test_old_planner_paths_warn_and_forward(tmp_path):
    import importlib
    import sys

    import ife_jax.nn
    from ife_jax.nnunet import image_plans
    from ife_jax.train import plan as train_plan

    sys.modules.pop("ife_jax.nn.nnunet_plan", None)
    with pytest.deprecated_call(match="ife_jax.nnunet.image_plans"):
        old = importlib.import_module("ife_jax.nn.nnunet_plan")
    assert old.NNUNetPlan is image_plans.NNUNetPlan
    with pytest.deprecated_call(match="ife_jax.nnunet.image_plans"):
        assert ife_jax.nn.format_plan is image_plans.format_plan
    with pytest.raises(AttributeError, match="no_such_name"):
        ife_jax.nn.no_such_name  # noqa: B018
    with pytest.deprecated_call(match="image_plans.make_plan"):
        with pytest.raises(ValueError, match="no"):  # an empty folder: no image pairs
            train_plan.make_plan(str(tmp_path), split="train")
