"""Training end to end on a tiny network and tiny in-memory data (``tinyrun.py`` in a fresh
process): checkpoints and logs, resume after SIGKILL, a corrupt checkpoint, 1 vs 2 devices,
2 processes, a non-finite loss."""

import json
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).parent
# 16 examples at batch 4: 4 steps per epoch; 2 epochs; a checkpoint every 2 steps.
RUN = ["--epochs", "2", "--examples", "16", "--checkpoint-every", "2"]
LIMIT = 400  # seconds per training subprocess (the first one compiles)


def _cmd(workdir, *args):
    return [sys.executable, str(HERE / "tinyrun.py"), str(workdir), *RUN, *args]


def _run(env, workdir, *args):
    out = subprocess.run(
        _cmd(workdir, *args), env=env, capture_output=True, text=True, timeout=LIMIT
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return out


def _params(npz):
    with np.load(npz) as f:
        return {k: f[k] for k in f.files}


def _records(workdir):
    return [json.loads(line) for line in (Path(workdir) / "metrics.jsonl").read_text().splitlines()]


def _losses(workdir):
    return np.array([r["loss"] for r in _records(workdir) if "loss" in r])


def _assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def _assert_equivalent(workdir, params, ref_workdir, ref_params):
    """The same training up to the order of floating-point sums.

    With the batch split over devices (or processes) and the state replicated, each step
    computes the same sums (the loss's mean, BatchNorm's batch statistics, the gradient's batch
    reduction) in a different order, so results differ by float32 rounding. SGD with momentum
    moves each parameter by lr x gradient, so that noise stays at rounding level (Adam's
    per-entry normalisation would blow the noise of exactly-zero gradients up to +-lr; see
    ``tinyrun.py``). Measured after 8 steps: losses agree to 3e-7 relative; every state entry
    to 1 ulp of float32 for the large ones (9.5e-7 on BatchNorm variances ~10, 1e-7 relative)
    and to < 1e-6 absolute for the momentum traces of near-zero gradients. The tolerances
    below leave a factor of 3-30 on top of that, far below what any real difference (a lost
    or doubled batch row, a wrong shard) produces.
    """
    np.testing.assert_allclose(_losses(workdir), _losses(ref_workdir), rtol=1e-5)
    assert params.keys() == ref_params.keys()
    for k in params:
        np.testing.assert_allclose(params[k], ref_params[k], rtol=1e-5, atol=1e-6, err_msg=k)


def test_checkpoints_resume_after_sigkill_and_corrupt_checkpoint(tmp_path, train_env):
    env = train_env()
    # An uninterrupted run: logs, curves, checkpoints.
    ref = tmp_path / "ref"
    _run(env, ref, "--dump", str(tmp_path / "ref.npz"))
    ref_params = _params(tmp_path / "ref.npz")
    records = _records(ref)
    assert [r["step"] for r in records if "loss" in r] == list(range(1, 9))
    assert [r["epoch"] for r in records if "val_dice" in r] == [1, 2]
    assert all(np.isfinite(r["loss"]) and r["images_per_s"] > 0 for r in records if "loss" in r)
    assert any("compile_seconds" in r for r in records)
    assert (ref / "curves.png").stat().st_size > 1000
    assert sorted(int(p.name) for p in (ref / "checkpoints").iterdir()) == [6, 8]
    assert len(list((ref / "best").iterdir())) == 1
    assert int(ref_params["['step']"]) == 8
    assert any("momentum" in k or "trace" in k for k in ref_params), "no optimiser state saved"

    # Killed with SIGKILL in epoch 2, after step 5 ran but before it was checkpointed.
    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        _cmd(killed, "--hang-at", "5"),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + LIMIT
    while not (killed / "hanging").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    steps = sorted(int(p.name) for p in (killed / "checkpoints").iterdir() if p.name.isdigit())
    assert steps and steps[-1] <= 4
    out = _run(env, killed, "--dump", str(tmp_path / "killed.npz"))
    assert f"resumed {killed} at step {steps[-1]}" in out.stdout
    _assert_same(_params(tmp_path / "killed.npz"), ref_params)
    assert [r["step"] for r in _records(killed) if "loss" in r] == list(range(1, 9))
    np.testing.assert_array_equal(_losses(killed), _losses(ref))

    # A corrupt latest checkpoint: moved aside with a warning, training goes on from step 6.
    import jax

    from ife_jax.train.checkpointing import Checkpointer

    corrupt = tmp_path / "corrupt"
    shutil.copytree(ref, corrupt)
    for f in (corrupt / "checkpoints" / "8" / "state").rglob("*"):
        if f.is_file():
            f.write_bytes(b"\0garbage")
    ck = Checkpointer(corrupt)
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), ck.read(6)[0])
    with pytest.warns(RuntimeWarning, match="cannot be read"):
        state, data, meta = ck.restore(target)
    ck.close()
    assert int(state["step"]) == 6 and data == {"step": 6} and meta["step"] == 6
    assert (corrupt / "corrupt" / "checkpoints_8").is_dir()
    out = _run(env, corrupt, "--dump", str(tmp_path / "corrupt.npz"))
    assert f"resumed {corrupt} at step 6" in out.stdout
    _assert_same(_params(tmp_path / "corrupt.npz"), ref_params)


def _free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_two_devices_and_two_processes_give_the_one_device_result(tmp_path, train_env):
    one = tmp_path / "one"
    _run(train_env(), one, "--dump", str(tmp_path / "one.npz"))
    ref_params = _params(tmp_path / "one.npz")

    two = tmp_path / "two_devices"
    _run(train_env(device_count=2), two, "--dump", str(tmp_path / "two.npz"))
    _assert_equivalent(two, _params(tmp_path / "two.npz"), one, ref_params)

    # Two processes of one CPU device each, over JAX's distributed runtime on localhost.
    procs = tmp_path / "two_processes"
    address = f"localhost:{_free_port()}"
    running = [
        subprocess.Popen(
            _cmd(procs, "--dump", str(tmp_path / "procs.npz")),
            env=train_env(
                JAX_COORDINATOR_ADDRESS=address,
                JAX_NUM_PROCESSES="2",
                JAX_PROCESS_ID=str(pid),
            ),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for pid in range(2)
    ]
    try:
        outs = [p.communicate(timeout=LIMIT) for p in running]
    finally:
        for p in running:
            if p.poll() is None:
                p.kill()
    for p, (_, err) in zip(running, outs, strict=True):
        assert p.returncode == 0, err[-3000:]
    _assert_equivalent(procs, _params(tmp_path / "procs.npz"), one, ref_params)


def test_non_finite_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(
    tmp_path, train_env
):
    # Batch index 5 (step 6) carries a NaN pixel; checkpoints at steps 2 and 4 are good.
    out = subprocess.run(
        _cmd(tmp_path / "run", "--inject-nan-at", "5"),
        env=train_env(),
        capture_output=True,
        text=True,
        timeout=LIMIT,
    )
    assert out.returncode != 0
    assert "NonFiniteLossError" in out.stderr and "at step 6" in out.stderr
    steps = sorted(int(p.name) for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert steps == [2, 4]


def test_metrics_log_drops_records_past_the_resumed_step(tmp_path):
    from ife_jax.train.loop import MetricsLog

    log = MetricsLog(tmp_path / "metrics.jsonl")
    for step in range(1, 7):
        log.append({"step": step, "loss": float(step)})
    log.append({"step": 4, "epoch": 1, "val_dice": 0.5})
    log.truncate_after(4)
    assert [(r["step"], "loss" in r) for r in log.read()] == [
        (1, True),
        (2, True),
        (3, True),
        (4, True),
        (4, False),
    ]
