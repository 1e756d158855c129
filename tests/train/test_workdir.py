"""What a workdir guarantees: one training process at a time (the lock), read-only commands that
change nothing, checkpoints kept when ``config.json`` is lost, and a set-up failure that does not
block the workdir. The runs are ``tinyrun.py`` in fresh processes (see ``test_train_loop.py``)."""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ife_jax.cli import main
from ife_jax.train.workdir import LOCK_FILE, WorkdirLock, WorkdirLockedError

HERE = Path(__file__).parent
RUN = ["--epochs", "2", "--examples", "16", "--checkpoint-every", "2"]  # steps 2, 4, 6, 8
LIMIT = 400

HOLD_LOCK = """
import sys, time
from ife_jax.train.workdir import WorkdirLock
with WorkdirLock(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(600)
"""


@pytest.fixture
def held_lock(tmp_path, train_env):
    """A workdir whose lock another live process holds: ``(workdir, process)``."""
    workdir = tmp_path / "run"
    workdir.mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(workdir)],
        env=train_env(),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout.readline().strip() == "locked"
        yield workdir, proc
    finally:
        proc.kill()
        proc.wait()


def _tree(root: Path, *, dirs: bool = True) -> dict:
    """Every path under ``root`` with its size and modification time (in nanoseconds)."""
    out = {}
    for path in sorted(root.rglob("*")):
        if path.is_dir() and not dirs:
            continue
        st = path.stat()
        out[str(path.relative_to(root))] = (path.is_dir(), st.st_size, st.st_mtime_ns)
    if dirs:
        out["."] = (True, 0, root.stat().st_mtime_ns)
    return out


def _tinyrun(env, workdir, *args, check=True):
    out = subprocess.run(
        [sys.executable, str(HERE / "tinyrun.py"), str(workdir), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=LIMIT,
    )
    if check:
        assert out.returncode == 0, out.stderr[-3000:]
    return out


def _corrupt(checkpoint: Path) -> None:
    """Overwrites the array data of a checkpoint (its metadata stays readable)."""
    files = [f for f in (checkpoint / "state").rglob("*") if f.is_file()]
    data = [f for f in files if f.parent.name == "d" or "ocdbt" in f.parent.name]
    assert data
    for f in data:
        f.write_bytes(b"\0garbage")


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, train_env):
    """A finished tiny run (checkpoints at steps 6 and 8, the best at 8); copy before changing."""
    workdir = tmp_path_factory.mktemp("finished") / "run"
    _tinyrun(train_env(), workdir, *RUN)
    return workdir


# ---------------------------------------------------------------------------------- the lock


def test_a_lock_held_by_a_live_process_is_refused_naming_it(held_lock):
    workdir, proc = held_lock
    with pytest.raises(WorkdirLockedError, match=f"process {proc.pid} on {socket.gethostname()}"):
        WorkdirLock(workdir).acquire()
    assert json.loads((workdir / LOCK_FILE).read_text())["pid"] == proc.pid


def test_a_stale_lock_of_a_dead_process_is_taken_over_with_a_warning(held_lock):
    workdir, proc = held_lock
    proc.kill()  # dies without releasing its lock
    proc.wait()
    assert json.loads((workdir / LOCK_FILE).read_text())["pid"] == proc.pid
    lock = WorkdirLock(workdir)
    with pytest.warns(RuntimeWarning, match=f"stale lock .*process {proc.pid} .* has ended"):
        lock.acquire()
    assert json.loads((workdir / LOCK_FILE).read_text())["pid"] == os.getpid()
    lock.release()
    assert not (workdir / LOCK_FILE).exists()


def test_a_lock_from_another_host_is_refused_naming_the_host(tmp_path):
    (tmp_path / LOCK_FILE).write_text(json.dumps({"pid": 1, "host": "elsewhere", "since": 0}))
    with pytest.raises(WorkdirLockedError, match="process 1 on host elsewhere"):
        WorkdirLock(tmp_path).acquire()
    assert json.loads((tmp_path / LOCK_FILE).read_text())["host"] == "elsewhere"


def test_a_second_train_on_a_locked_workdir_fails_at_once_naming_the_holder(held_lock, capsys):
    workdir, proc = held_lock
    before = _tree(workdir, dirs=False)  # the refused lock attempt touches the folder's mtime
    start = time.perf_counter()
    assert main(["train", "--preset", "tiny", "--workdir", str(workdir), "--no-progress"]) == 2
    assert time.perf_counter() - start < 30  # refused before loading data or compiling
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"locked by process {proc.pid}" in err, err
    assert _tree(workdir, dirs=False) == before


# ------------------------------------------------------------------------ read-only commands


def test_predict_and_evaluate_change_nothing_in_the_workdir_and_skip_a_corrupt_best(
    finished_run, tmp_path, train_env
):
    from PIL import Image
    from tinyrun import blob_examples

    from ife_jax.train.evaluate import evaluate

    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    _corrupt(run / "best" / "8")
    _corrupt(run / "checkpoints" / "8")
    before = _tree(run)

    image = tmp_path / "img.png"
    Image.fromarray(blob_examples(1)[0].image).save(image)
    out = subprocess.run(
        [sys.executable, "-m", "ife_jax.cli", "predict", "--workdir", str(run)]
        + ["--output", str(tmp_path / "pred"), str(image)],
        env=train_env(),
        capture_output=True,
        text=True,
        timeout=LIMIT,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert (tmp_path / "pred" / "img_mask.png").exists()
    # Two warnings (the unreadable best/8 and checkpoints/8) and the fallback, nothing else:
    # no "Event loop is closed" or "exception was never retrieved" tracebacks.
    assert "Traceback" not in out.stderr and "Event loop" not in out.stderr, out.stderr[-3000:]
    assert out.stderr.count("cannot be read") == 2 and "newest readable recent" in out.stderr
    assert len(out.stderr.splitlines()) <= 8, out.stderr[-3000:]
    assert _tree(run) == before

    with pytest.warns(RuntimeWarning) as caught:
        result = evaluate(run, examples=blob_examples(2, seed=3), output=tmp_path / "report")
    messages = [str(w.message) for w in caught]
    assert sum("cannot be read" in m and "skipping it" in m for m in messages) == 2
    assert any("newest readable recent" in m for m in messages)
    assert result["step"] == 6  # the newest readable checkpoint
    assert (tmp_path / "report" / "summary.json").exists()
    assert _tree(run) == before
    assert not (run / "corrupt").exists()


def test_predict_with_no_readable_checkpoint_fails_in_one_line_and_changes_nothing(
    finished_run, tmp_path, capsys
):
    from PIL import Image
    from tinyrun import blob_examples

    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    for checkpoint in ("best/8", "checkpoints/6", "checkpoints/8"):
        _corrupt(run / checkpoint)
    image = tmp_path / "img.png"
    Image.fromarray(blob_examples(1)[0].image).save(image)
    before = _tree(run)
    with pytest.warns(RuntimeWarning):
        code = main(["predict", "--workdir", str(run), "--output", str(tmp_path / "p"), str(image)])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "none of its checkpoints can be read" in err, err
    assert "best/: steps [8], checkpoints/: steps [6, 8]" in err
    assert _tree(run) == before


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write to read-only folders")
def test_a_read_only_finished_run_still_predicts(finished_run, tmp_path):
    from PIL import Image
    from tinyrun import blob_examples

    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    image = tmp_path / "img.png"
    Image.fromarray(blob_examples(1)[0].image).save(image)
    modes = {p: p.stat().st_mode for p in [run, *run.rglob("*")] if p.is_dir()}
    for p in modes:
        p.chmod(0o555)
    try:
        argv = ["predict", "--workdir", str(run), "--output", str(tmp_path / "p"), str(image)]
        assert main(argv) == 0
        assert main(["evaluate", "--workdir", str(run)]) == 2  # default report folder: read-only
    finally:
        for p, mode in modes.items():
            p.chmod(mode)


# --------------------------------------------------------------------- a lost config.json


def test_a_lost_config_is_recovered_from_the_checkpoints_and_no_checkpoint_is_lost(
    finished_run, tmp_path, train_env, capsys
):
    from ife_jax.train.evaluate import load_config

    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").unlink()
    before = _tree(run, dirs=False)
    with pytest.warns(RuntimeWarning, match="config.json is missing"):
        assert load_config(run).to_dict() == load_config(finished_run).to_dict()

    # Another configuration is refused, naming the difference; nothing is moved or deleted.
    out = _tinyrun(train_env(), run, *RUN[:1], "3", *RUN[2:], check=False)
    assert out.returncode != 0 and "different configuration (epochs: 2 -> 3)" in out.stderr
    assert _tree(run, dirs=False) == before

    # Checkpoints that do not record their configuration: refused, naming what to do.
    for meta in run.glob("*/*/meta/metadata"):
        saved = json.loads(meta.read_text())
        del saved["config"]
        meta.write_text(json.dumps(saved))
    before = _tree(run, dirs=False)
    argv = ["train", "--preset", "tiny", "--workdir", str(run), "--no-progress"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "put the run's config.json back" in err, err
    assert _tree(run, dirs=False) == before

    # With config.json back, the same configuration resumes (nothing left to train).
    (run / "config.json").write_text(json.dumps(config))
    out = _tinyrun(train_env(), run, *RUN)
    assert f"resumed {run} at step 8" in out.stdout
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["6", "8"]
    assert not (run / "corrupt").exists()


# ------------------------------------------------------------------------- set-up failures


def test_a_run_that_fails_during_set_up_does_not_block_its_workdir(tmp_path, train_env):
    run = tmp_path / "run"
    out = _tinyrun(train_env(), run, *RUN, "--train-sizes", "33", check=False)
    assert out.returncode != 0 and "train_sizes=(33,): size 33" in out.stderr
    assert sorted(p.name for p in run.iterdir()) == []  # no config.json, no lock
    out = _tinyrun(train_env(), run, "--epochs", "1", "--examples", "4")
    assert "from scratch" in out.stdout
    assert json.loads((run / "config.json").read_text())["train_sizes"] == [32]
