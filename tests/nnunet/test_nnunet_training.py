"""Tiny nnU-Net trainings (2-D and 3-D) lower the loss, and predict writes the input affine."""

import numpy as np
import pytest

from ife_jax.nnunet import plans, preprocessing, training

nib = pytest.importorskip("nibabel")


def _config(dims):
    patch = (16, 16) if dims == 2 else (8, 16, 16)
    ones, twos = (1,) * dims, (2,) * dims
    return plans.ConfigurationPlan(
        configuration="2d" if dims == 2 else "3d_fullres",
        spacing=(1.0,) * dims,
        median_shape=patch,
        patch_size=patch,
        batch_size=2,
        features=(4, 8, 8),
        strides=(ones, twos, twos),
        kernel_sizes=((3,) * dims,) * 3,
        ife_levels=(0,),
        ife_ratios=(0.5,),
    )


def _cases(folder):
    rng = np.random.default_rng(0)
    for i in range(2):
        z, y, x = np.meshgrid(np.arange(8), np.arange(16), np.arange(16), indexing="ij")
        seg = (((y - 8) / 5) ** 2 + ((x - 8 - i) / 5) ** 2 < 1).astype(np.int8) * (z > 1)
        data = (seg + 0.3 * rng.normal(size=seg.shape)).astype(np.float32)[None]
        props = preprocessing.CaseProperties(
            case=f"c{i}",
            raw_shape=(8, 16, 16),
            spacing=(1.0,) * 3,
            bbox=((0, 8), (0, 16), (0, 16)),
            cropped_shape=(8, 16, 16),
            cropped_spacing=(1.0,) * 3,
            target_spacing=(1.0,) * 3,
            affine=tuple(tuple(r) for r in np.eye(4)),
        )
        preprocessing.save_case(folder, data, seg, props)
    return ["c0", "c1"]


@pytest.mark.parametrize("dims,ife", [(2, "entropy"), (3, None)])
def test_tiny_training_lowers_the_loss_and_resumes(tmp_path, dims, ife):
    names = _cases(tmp_path / "pp")
    config = _config(dims)
    schedule = training.Schedule(epochs=3, iterations=2, learning_rate=0.01)
    losses = training.train(
        preprocessed=tmp_path / "pp",
        output=tmp_path / "out",
        config=config,
        case_names=names,
        schedule=schedule,
        ife=ife,
        log=lambda *_: None,
    )
    assert len(losses) == 3 and losses[-1] < losses[0]
    # A finished run resumes at its last epoch: nothing more to train.
    again = training.train(
        preprocessed=tmp_path / "pp",
        output=tmp_path / "out",
        config=config,
        case_names=names,
        schedule=schedule,
        ife=ife,
        log=lambda *_: None,
    )
    assert again == []
