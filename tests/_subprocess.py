"""Killing a training subprocess at a chosen point, for the resume-after-SIGKILL tests."""

import signal
import subprocess
import sys
import time
from pathlib import Path


def sigkill_when_hanging(cmd: list[str], env: dict, workdir: Path, limit: float) -> None:
    """Start ``cmd`` (a tiny run given ``--hang-at``), wait until it writes ``workdir/hanging``
    and SIGKILL it there; fails if the run ends first or does not get there in ``limit``
    seconds."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + limit
    while not (workdir / "hanging").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def run_cli(argv: list[str], env: dict, timeout: float = 400) -> subprocess.CompletedProcess:
    """``python -m ife_jax.cli ARGV`` in a subprocess; fails with its stderr unless it exits 0."""
    out = subprocess.run(
        [sys.executable, "-m", "ife_jax.cli", *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return out
