"""Loading torchvision-layout ResNet state dicts onto the Flax backbone."""

import json
import struct

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from ife_jax.nn import DeepLabV3Plus, ResNet
from ife_jax.nn.pretrained import (
    load_pretrained_backbone,
    load_resnet_state_dict,
    read_safetensors,
    read_state_dict,
    resnet_to_state_dict,
    write_safetensors,
)


def torchvision_resnet_shapes(blocks=(3, 4, 6, 3), width=64, in_ch=3):
    """Names and shapes of torchvision's ``resnet50().state_dict()`` (written out by hand)."""
    shapes = {"conv1.weight": (width, in_ch, 7, 7)}

    def bn(name, c):
        shapes.update({f"{name}.{s}": (c,) for s in ("weight", "bias", "running_mean")})
        shapes[f"{name}.running_var"] = (c,)
        shapes[f"{name}.num_batches_tracked"] = ()

    bn("bn1", width)
    inplanes = width
    for stage, n in enumerate(blocks):
        planes = width * 2**stage
        for b in range(n):
            p = f"layer{stage + 1}.{b}"
            shapes[f"{p}.conv1.weight"] = (planes, inplanes, 1, 1)
            bn(f"{p}.bn1", planes)
            shapes[f"{p}.conv2.weight"] = (planes, planes, 3, 3)
            bn(f"{p}.bn2", planes)
            shapes[f"{p}.conv3.weight"] = (planes * 4, planes, 1, 1)
            bn(f"{p}.bn3", planes * 4)
            if b == 0:
                shapes[f"{p}.downsample.0.weight"] = (planes * 4, inplanes, 1, 1)
                bn(f"{p}.downsample.1", planes * 4)
            inplanes = planes * 4
    shapes["fc.weight"] = (1000, inplanes)
    shapes["fc.bias"] = (1000,)
    return shapes


def random_state_dict(shapes, seed=0):
    rng = np.random.default_rng(seed)
    return {
        k: np.asarray(7, np.int64) if k.endswith("num_batches_tracked")
        else rng.uniform(0.1, 1.0, s).astype(np.float32)
        for k, s in shapes.items()
    }  # fmt: skip


def zero_variables(model, shape):
    v = jax.eval_shape(
        model.init, jax.random.key(0, impl="rbg"), jax.ShapeDtypeStruct(shape, jnp.float32)
    )
    return jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), v)


@pytest.fixture(scope="module")
def resnet50_state_dict():
    return random_state_dict(torchvision_resnet_shapes())


def test_resnet50_loads_every_tensor_and_round_trips(resnet50_state_dict):
    sd = resnet50_state_dict
    variables = zero_variables(ResNet("resnet50"), (1, 64, 64, 3))
    loaded = load_resnet_state_dict(variables, sd, prefix=())
    p, s = loaded["params"], loaded["batch_stats"]
    np.testing.assert_array_equal(p["conv1"]["kernel"], sd["conv1.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(
        p["layer3_5"]["conv2"]["kernel"][1, 2, 7, 4], sd["layer3.5.conv2.weight"][4, 7, 1, 2]
    )
    np.testing.assert_array_equal(p["layer2_0"]["downsample_bn"]["scale"],
                                  sd["layer2.0.downsample.1.weight"])  # fmt: skip
    np.testing.assert_array_equal(s["layer4_2"]["bn3"]["var"], sd["layer4.2.bn3.running_var"])
    np.testing.assert_array_equal(s["bn1"]["mean"], sd["bn1.running_mean"])
    # Every leaf was replaced (the zeros are gone).
    assert all(np.all(leaf != 0) for leaf in jax.tree.leaves(loaded))
    assert not np.any(variables["params"]["conv1"]["kernel"])  # input left untouched

    back = resnet_to_state_dict(loaded, prefix=())
    kept = {k for k in sd if not k.startswith("fc.") and "num_batches" not in k}
    assert set(back) == kept and len(kept) == 265
    for k in kept:
        assert back[k].shape == sd[k].shape, k
        np.testing.assert_array_equal(back[k], sd[k])
    again = load_resnet_state_dict(variables, back, prefix=())
    jax.tree.map(np.testing.assert_array_equal, again, loaded)


def test_deeplab_backbone_prefix_and_grey_input(resnet50_state_dict):
    sd = resnet50_state_dict
    variables = zero_variables(DeepLabV3Plus(), (1, 64, 64, 1))
    loaded = load_resnet_state_dict(variables, sd)
    conv1 = loaded["params"]["backbone"]["conv1"]["kernel"]
    assert conv1.shape == (7, 7, 1, 64)  # RGB filters summed for grey input
    np.testing.assert_allclose(conv1[..., 0, :], sd["conv1.weight"].sum(1).transpose(1, 2, 0),
                               rtol=1e-6)  # fmt: skip
    assert not np.any(loaded["params"]["aspp"]["project"]["conv"]["kernel"])  # untouched
    with pytest.raises(ValueError, match="no 'encoder'"):
        load_resnet_state_dict(variables, sd, prefix=("encoder",))


def test_errors_list_missing_unexpected_and_mismatched(resnet50_state_dict):
    sd = dict(resnet50_state_dict)
    del sd["layer1.0.bn2.running_var"]
    sd["layer1.0.extra.weight"] = np.zeros(3, np.float32)
    sd["layer4.1.conv2.weight"] = np.zeros((512, 512, 1, 1), np.float32)
    variables = zero_variables(ResNet("resnet50"), (1, 64, 64, 3))
    with pytest.raises(ValueError) as err:
        load_resnet_state_dict(variables, sd, prefix=())
    msg = str(err.value)
    assert "missing from the state dict (1): layer1.0.bn2.running_var" in msg
    assert "unexpected in the state dict (1): layer1.0.extra.weight" in msg
    assert "layer4.1.conv2.weight: file (512, 512, 1, 1), model expects (512, 512, 3, 3)" in msg
    # ResNet-101 weights into a ResNet-50: the extra blocks are reported as unexpected.
    sd101 = torchvision_resnet_shapes((3, 4, 23, 3))
    with pytest.raises(
        ValueError,
        match=r"unexpected in the state dict \(255\): layer3.10.bn1.bias, .*\(235 more\)",
    ):
        load_resnet_state_dict(variables, random_state_dict(sd101), prefix=())


def test_stem_numerics_match_a_numpy_convolution():
    """conv1 (OIHW -> HWIO, no flip) + bn1 (running stats) against NumPy, on a tiny ResNet."""
    model = ResNet("resnet50", base_width=4)
    sd = random_state_dict(torchvision_resnet_shapes(width=4), seed=3)
    variables = load_resnet_state_dict(zero_variables(model, (1, 32, 32, 3)), sd, prefix=())
    x = np.random.default_rng(1).normal(size=(1, 32, 32, 3)).astype(np.float32)
    apply = jax.jit(lambda v, x: model.apply(v, x, capture_intermediates=True, mutable=True)[1])
    bn1 = np.asarray(apply(variables, x)["intermediates"]["bn1"]["__call__"][0])
    w = sd["conv1.weight"]  # (O, I, 7, 7), cross-correlation, stride 2, zero padding 3
    xp = np.pad(x[0], ((3, 3), (3, 3), (0, 0)))
    conv = np.zeros((16, 16, 4))
    for i in range(16):
        for j in range(16):
            patch = xp[2 * i : 2 * i + 7, 2 * j : 2 * j + 7, :]  # (7, 7, I)
            conv[i, j] = np.einsum("hwi,oihw->o", patch, w)
    expected = (conv - sd["bn1.running_mean"]) / np.sqrt(sd["bn1.running_var"] + 1e-5)
    expected = expected * sd["bn1.weight"] + sd["bn1.bias"]
    np.testing.assert_allclose(bn1[0], expected, rtol=1e-4, atol=1e-4)


def test_safetensors_layout_by_hand(tmp_path):
    # A file built byte by byte: header length, JSON header, little-endian data.
    header = {
        "a": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]},
        "b": {"dtype": "I64", "shape": [], "data_offsets": [16, 24]},
        "__metadata__": {"format": "pt"},
    }
    text = json.dumps(header).encode()
    data = struct.pack("<4f", 1.0, 2.0, 3.0, -4.5) + struct.pack("<q", 42)
    path = tmp_path / "hand.safetensors"
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)
    sd = read_safetensors(path)
    np.testing.assert_array_equal(sd["a"], [[1.0, 2.0], [3.0, -4.5]])
    assert sd["b"].dtype == np.int64 and sd["b"] == 42
    # Our writer's bytes parse the same way.
    write_safetensors(tmp_path / "ours.safetensors", sd)
    raw = (tmp_path / "ours.safetensors").read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    assert n % 8 == 0 and json.loads(raw[8 : 8 + n])["a"]["data_offsets"] == [0, 16]
    assert raw[8 + n : 8 + n + 16] == data[:16]


@pytest.mark.parametrize("ext", [".safetensors", ".npz"])
def test_file_round_trip_and_load(tmp_path, ext):
    sd = random_state_dict(torchvision_resnet_shapes(width=4), seed=5)
    sd["half"] = np.arange(6, dtype=np.float16).reshape(2, 3)
    if ext == ".safetensors":
        sd["brain"] = np.arange(4).astype(ml_dtypes.bfloat16)
        write_safetensors(tmp_path / f"w{ext}", sd)
    else:
        np.savez(tmp_path / f"w{ext}", **sd)
    back = read_state_dict(tmp_path / f"w{ext}")
    assert set(back) == set(sd)
    for k in sd:
        assert back[k].dtype == sd[k].dtype and back[k].shape == sd[k].shape
        np.testing.assert_array_equal(back[k], sd[k])
    variables = zero_variables(ResNet(base_width=4), (1, 32, 32, 3))
    loaded = load_pretrained_backbone(
        variables, tmp_path / f"w{ext}", prefix=(), ignore=(r"num_batches", r"^fc\.", "half|brain")
    )
    np.testing.assert_array_equal(loaded["params"]["layer1_0"]["conv3"]["kernel"][0, 0],
                                  sd["layer1.0.conv3.weight"][:, :, 0, 0].T)  # fmt: skip


def test_unknown_format(tmp_path):
    with pytest.raises(ValueError, match="unknown state-dict format"):
        read_state_dict(tmp_path / "weights.h5")
