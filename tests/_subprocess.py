"""Killing a training subprocess at a chosen point, for the resume-after-SIGKILL tests."""

import signal
import subprocess
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
