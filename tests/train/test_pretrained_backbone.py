"""``pretrained_backbone``: a run starts from the file, records it, and rejects a misfit early."""

import hashlib
import json

import jax
import numpy as np
import pytest
from _subprocess import run_cli

from ife_jax.cli import main
from ife_jax.nn import Res2Net, ResNet, res2net_to_state_dict, resnet_to_state_dict
from ife_jax.nn.pretrained import write_safetensors
from ife_jax.train.config import TrainConfig
from ife_jax.train.loop import fresh_state
from ife_jax.train.models import build_model
from ife_jax.train.pretrained import load_backbone
from ife_jax.train.sharding import make_mesh
from ife_jax.train.state import abstract_train_state, make_optimizer, state_shardings

DEEPLAB = dict(backbone="resnet50", base_width=4, aspp_features=8, low_level_features=8,
               decoder_features=8)  # fmt: skip
SINET = dict(blocks=(1, 1, 1, 1), planes=8)
BACKBONES = {
    "deeplabv3plus": (ResNet(base_width=4, multi_grid=(1, 2, 4)), resnet_to_state_dict, DEEPLAB),
    "sinetv2": (Res2Net(blocks=(1, 1, 1, 1), planes=8), res2net_to_state_dict, SINET),
}


def random_backbone(model, shape=(1, 64, 64, 3), seed=0):
    """A bare backbone's variables filled with NumPy random values (no compiled init)."""
    abstract = jax.eval_shape(model.init, jax.random.key(0), jax.ShapeDtypeStruct(shape, "f4"))
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        name = path[-1].key
        if name == "kernel":
            fan_in = int(np.prod(leaf.shape[:-1]))
            return rng.normal(0, np.sqrt(2 / fan_in), leaf.shape).astype(np.float32)
        if name == "var":
            return rng.uniform(0.5, 2.0, leaf.shape).astype(np.float32)
        return rng.normal(0, 0.3, leaf.shape).astype(np.float32)

    return jax.tree_util.tree_map_with_path(fill, abstract)


def write_state_dict(path, state_dict):
    if str(path).endswith(".npz"):
        np.savez(path, **state_dict)
    else:
        write_safetensors(path, state_dict)
    return str(path)


@pytest.mark.parametrize(("model", "ext"), [("deeplabv3plus", ".npz"), ("sinetv2", ".safetensors")])
def test_the_first_forward_uses_the_files_backbone(tmp_path, model, ext):
    backbone, to_state_dict, kwargs = BACKBONES[model]
    given = random_backbone(backbone)
    path = write_state_dict(tmp_path / f"backbone{ext}", to_state_dict(given, prefix=()))
    config = TrainConfig(model=model, model_kwargs=kwargs, pretrained_backbone=path)
    network = build_model(config)
    tx = make_optimizer(config, 1)
    abstract, init = abstract_train_state(network, tx, (1, 64, 64, 3))
    shardings = state_shardings(abstract, make_mesh())
    loaded = load_backbone(config, (1, 64, 64, 3))
    state = fresh_state(init, jax.random.key(1), shardings, loaded)

    # Every backbone variable is the file's (OIHW kernels transposed, statistics included).
    start = {"params": state.params["backbone"], "batch_stats": state.batch_stats["backbone"]}
    jax.tree.map(np.testing.assert_array_equal, start, given)
    assert set(state.params) > {"backbone"}  # the rest of the network is still there

    # The first forward's backbone features are those of the file's backbone.
    x = jax.random.normal(jax.random.key(2), (2, 64, 64, 3))
    features = jax.jit(lambda v: backbone.apply(v, x))
    for ours, theirs in zip(features(start), features(given), strict=True):
        np.testing.assert_array_equal(np.asarray(ours), np.asarray(theirs))
    # ... which another backbone of the same shapes does not give.
    other = features(random_backbone(backbone, seed=1))
    assert not np.allclose(np.asarray(other[-1]), np.asarray(features(given)[-1]))


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    data = str(tmp_path_factory.mktemp("tfds"))
    assert main(["build-dataset", "synthetic/tiny", "--data-dir", data]) == 0
    return data


def deeplab_config(tmp_path, data):
    config = TrainConfig(
        model="deeplabv3plus", model_kwargs=DEEPLAB, dataset="synthetic/tiny", data_dir=data,
        max_train_examples=4, max_eval_examples=2, batch_size=2, epochs=1, train_sizes=(32,),
        eval_size=32, learning_rate=1e-3,
    )  # fmt: skip
    path = tmp_path / "config.json"
    path.write_text(config.to_json())
    return str(path)


def test_a_file_that_does_not_fit_stops_the_run_before_training(tmp_path, tiny_data, capsys):
    state_dict = resnet_to_state_dict(random_backbone(BACKBONES["deeplabv3plus"][0]), prefix=())
    del state_dict["layer4.2.bn3.running_var"]
    state_dict["layer5.0.conv1.weight"] = np.zeros((1, 1, 1, 1), np.float32)
    state_dict["layer1.0.conv2.weight"] = np.zeros((4, 4, 5, 5), np.float32)
    path = write_state_dict(tmp_path / "bad.npz", state_dict)
    run = tmp_path / "run"
    argv = ["train", "--config", deeplab_config(tmp_path, tiny_data), "--workdir", str(run),
            "--pretrained-backbone", path, "--no-progress"]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "bad.npz" in err and "layer4.2.bn3.running_var" in err
    assert "layer5.0.conv1.weight" in err
    assert "layer1.0.conv2.weight: file (4, 4, 5, 5), model expects (4, 4, 3, 3)" in err
    assert not run.exists()  # nothing written: a corrected file can use the same workdir


@pytest.mark.parametrize("model", ["unet", "nnunet"])
def test_other_networks_reject_the_flag(tmp_path, model, capsys):
    argv = ["train", "--model", model, "--workdir", str(tmp_path / "run"),
            "--pretrained-backbone", str(tmp_path / "resnet50.npz")]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "pretrained_backbone" in err and f"model={model!r} has none" in err
    assert not (tmp_path / "run").exists()


@pytest.mark.slow  # compiles a (narrow) DeepLabV3+ train step
def test_a_run_records_the_file_and_its_sha256(tmp_path, tiny_data, train_env):
    state_dict = resnet_to_state_dict(random_backbone(BACKBONES["deeplabv3plus"][0]), prefix=())
    path = write_state_dict(tmp_path / "resnet.safetensors", state_dict)
    run = tmp_path / "run"
    argv = ["train", "--config", deeplab_config(tmp_path, tiny_data), "--workdir", str(run),
            "--pretrained-backbone", path, "--no-progress"]  # fmt: skip
    out = run_cli(argv, train_env())
    assert f"with the backbone of {path}" in out.stdout
    saved = json.loads((run / "config.json").read_text())
    with open(path, "rb") as f:
        sha = hashlib.sha256(f.read()).hexdigest()
    assert saved["pretrained_backbone"] == path and saved["pretrained_backbone_sha256"] == sha
    # Another file under the same name no longer matches the recorded run.
    write_state_dict(path, {k: v + 1 for k, v in state_dict.items()})
    config = TrainConfig.from_json((run / "config.json").read_text())
    from ife_jax.train.pretrained import record_pretrained_backbone

    with pytest.raises(ValueError, match="the file changed"):
        record_pretrained_backbone(config)
