"""Tiny nnU-Net trainings, each in its own process (nnunet_tinyrun.py): 3-D lowers the loss and
a finished run resumes to nothing; 2-D with IFE lowers the loss and resumes bit-exactly after
SIGKILL."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from _subprocess import sigkill_when_hanging

from ife_jax.nnunet import preprocessing

nib = pytest.importorskip("nibabel")

HERE = Path(__file__).parent
LIMIT = 300  # seconds a training subprocess may take before the test fails


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


def test_tiny_3d_training_lowers_the_loss_and_a_finished_run_resumes_to_nothing(
    tmp_path, train_env
):
    env = train_env()
    pp = tmp_path / "pp"
    _cases(pp)
    for dump in ("first.npz", "again.npz"):
        out = _run(env, pp, tmp_path / "out", tmp_path / dump, "--dims", "3")
    losses = np.load(tmp_path / "first.npz")["losses"]
    assert len(losses) == 3 and losses[-1] < losses[0]
    assert "resumed at epoch 3" in out and len(np.load(tmp_path / "again.npz")["losses"]) == 0


def _run(env, pp, out, dump, *extra):
    cmd = [sys.executable, str(HERE / "nnunet_tinyrun.py"), str(pp), str(out), "--dump", str(dump)]
    proc = subprocess.run([*cmd, *extra], env=env, capture_output=True, text=True, timeout=LIMIT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_tiny_2d_training_with_ife_resumes_bit_exactly_after_sigkill(tmp_path, train_env):
    env = train_env()
    pp = tmp_path / "pp"
    _cases(pp)
    _run(env, pp, tmp_path / "ref", tmp_path / "ref.npz")
    ref = dict(np.load(tmp_path / "ref.npz"))
    assert len(ref["losses"]) == 3 and ref["losses"][-1] < ref["losses"][0]

    # Killed after epoch 1 ran, before it was checkpointed: resumes from the epoch-0 checkpoint.
    killed = tmp_path / "killed"
    cmd = [sys.executable, str(HERE / "nnunet_tinyrun.py"), str(pp), str(killed)]
    sigkill_when_hanging(
        [*cmd, "--dump", str(tmp_path / "unused.npz"), "--hang-at", "1"], env, killed, LIMIT
    )
    out = _run(env, pp, killed, tmp_path / "killed.npz")
    assert "resumed at epoch 1" in out
    got = dict(np.load(tmp_path / "killed.npz"))
    np.testing.assert_array_equal(got["losses"], ref["losses"][1:])
    assert sorted(got) == sorted(ref)
    for k in ref:
        if k != "losses":
            np.testing.assert_array_equal(got[k], ref[k], err_msg=k)
