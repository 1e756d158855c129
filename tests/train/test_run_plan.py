"""The nnU-Net plan of a training run: made from the training data, kept in the workdir."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from ife_jax.train.config import TrainConfig
from ife_jax.train.models import build_model
from ife_jax.train.plan import PLAN_FILE, plan_for_run


@pytest.fixture
def folder(tmp_path):
    """Four 64 x 64 RGB images with a bright square each, as X.png / X_mask.png pairs."""
    rng = np.random.default_rng(0)
    for i in range(4):
        mask = np.zeros((64, 64), np.uint8)
        mask[10 + i : 40 + i, 12:44] = 255
        image = rng.integers(0, 80, (64, 64, 3)).astype(np.uint8)
        image[mask > 0] += 120
        Image.fromarray(image).save(tmp_path / f"CT_Organ_{i}.png")
        Image.fromarray(mask).save(tmp_path / f"CT_Organ_{i}_mask.png")
    return tmp_path


def test_nnunet_run_plans_once_and_builds_its_network(folder, tmp_path):
    config = TrainConfig(model="nnunet", ife="entropy", dataset=str(folder), train_sizes=(64,))
    workdir = tmp_path / "run"
    plan = plan_for_run(config, workdir)
    assert (workdir / PLAN_FILE).exists()
    assert plan.in_channels == 3 and plan.num_images == 4 and plan.median_shape == (64, 64)
    assert plan_for_run(config, workdir) == plan  # read back, not recomputed
    model = build_model(config, plan=plan)
    assert model.plan == plan and model.ife == "entropy"
    x = jax.ShapeDtypeStruct((2, 64, 64, 3), jnp.float32)
    variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x), x)
    out = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, x)
    assert out.shape == (2, 64, 64, 1)


def test_training_sizes_must_fit_the_plan(folder, tmp_path):
    config = TrainConfig(model="nnunet", dataset=str(folder), train_sizes=(64,))
    stride = plan_for_run(config, tmp_path / "run").total_stride[0]
    bad = config.replace(train_sizes=(64, stride * 2 + stride // 2))
    with pytest.raises(ValueError, match="train_sizes"):
        plan_for_run(bad, tmp_path / "run")
    with pytest.raises(ValueError, match="ratios"):
        build_model(config.replace(ratios=(0.5, 0.5)), plan=plan_for_run(config, tmp_path / "run"))
