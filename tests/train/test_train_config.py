import json

import pytest

from ife_jax.train.config import PRESETS, TrainConfig, preset


def test_reference_presets_follow_the_recipe():
    unet = preset("unet")
    assert (unet.learning_rate, unet.grad_clip_norm, unet.eval_size) == (1e-4, 1.0, 224)
    assert unet.train_sizes == (224, 256, 288, 320, 352, 384)
    assert (unet.epochs, unet.batch_size, unet.decay_epochs) == (100, 16, (50,))
    for name in ("deeplabv3plus", "sinetv2"):
        config = preset(name)
        assert (config.epochs, config.batch_size, config.decay_epochs) == (60, 32, (30,))
    assert preset("deeplabv3plus").model_kwargs == {"backbone": "resnet101"}


def test_table1_presets():
    # Table 1's UNet+C row is Table 2's (0.75, 0.50) row; UNet+E is its (0.50, 0.50) row.
    assert (preset("unet+c").ife, preset("unet+c").ratios) == ("curvature", (0.75, 0.5))
    assert (preset("unet+e").ife, preset("unet+e").ratios) == ("entropy", (0.5, 0.5))
    # DeepLabV3+: IFE on the low-level features only; SINetV2: the three TEM outputs.
    for ife in ("c", "e"):
        assert preset(f"deeplabv3plus+{ife}").ratios == (0.75, 0.0)
        assert preset(f"sinetv2+{ife}").ratios == (0.75, 0.75, 1.0)
        assert preset(f"nnunet+{ife}").ratios is None  # from the plan
        for name in ("unet", "deeplabv3plus", "sinetv2", "nnunet"):
            variant, plain = preset(f"{name}+{ife}"), preset(name)
            assert variant.replace(ife=None, ratios=None) == plain


def test_ratio_zero_is_allowed_and_other_models_reject_a_backbone_file():
    assert TrainConfig(model="unet", ife="entropy", ratios=(0.5, 0.0)).ratios == (0.5, 0.0)
    config = TrainConfig(model="sinetv2", pretrained_backbone="res2net.npz")
    assert config.pretrained_backbone == "res2net.npz"
    for model in ("unet", "nnunet"):
        with pytest.raises(ValueError, match=f"model='{model}' has none"):
            TrainConfig(model=model, pretrained_backbone="resnet50.npz")


def test_decay_every_gives_several_boundaries():
    assert TrainConfig(epochs=10, decay_every_epochs=3).decay_epochs == (3, 6, 9)
    assert TrainConfig(epochs=1).decay_epochs == ()


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_json_round_trip(name):
    config = PRESETS[name]
    assert TrainConfig.from_json(config.to_json()) == config
    assert json.loads(config.to_json())["model"] == config.model


@pytest.mark.parametrize(
    "field, value",
    [
        ("model", "vgg"),
        ("ife", "sharpness"),
        ("ratios", (0.5, 1.5)),
        ("ratios", (-0.5, 0.5)),
        ("pretrained_backbone", "resnet50.npz"),  # the default model, UNet, has no backbone
        ("pretrained_backbone_sha256", "00"),
        ("precision", "float16"),
        ("batch_size", 0),
        ("train_sizes", ()),
        ("learning_rate", -1.0),
        ("learning_rate", 0.0),
        ("learning_rate", float("nan")),
        ("learning_rate", float("inf")),
        ("grad_clip_norm", float("nan")),
        ("grad_clip_norm", float("inf")),
        ("decay_factor", 2.0),
        ("decay_factor", float("nan")),
        ("ratios", (0.5, float("nan"))),
        ("epochs", 0),
        ("augment", "rotate"),
    ],
)
def test_bad_values_name_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        TrainConfig(**{field: value})


def test_unknown_fields_and_presets_are_rejected():
    with pytest.raises(ValueError, match="bogus"):
        TrainConfig.from_dict({"bogus": 1})
    with pytest.raises(ValueError, match="nope"):
        preset("nope")


@pytest.mark.parametrize(
    "field, value",
    [
        ("batch_size", "4"),
        ("batch_size", 4.0),
        ("batch_size", True),
        ("epochs", None),
        ("learning_rate", "1e-3"),
        ("ratios", [0.5, "0.5"]),
        ("ratios", 0.5),
        ("train_sizes", 33),
        ("train_sizes", ["32"]),
        ("model", 1),
        ("ife", 0),
        ("model_kwargs", ["widths"]),
        ("max_train_examples", 8.5),
    ],
)
def test_config_fields_are_type_checked_when_read(field, value):
    data = {**json.loads(PRESETS["tiny"].to_json()), field: value}
    with pytest.raises(ValueError, match=f"^{field}=.*must be of type"):
        TrainConfig.from_dict(data)


def test_json_numbers_of_the_right_kind_are_accepted():
    data = {**json.loads(PRESETS["tiny"].to_json()), "learning_rate": 1, "ratios": [1, 0.5]}
    config = TrainConfig.from_dict(data)
    assert config.learning_rate == 1.0 and config.ratios == (1.0, 0.5)
