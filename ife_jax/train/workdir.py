"""The run directory: which configuration it holds, and the lock of the one run training in it.

A workdir holds a run once it holds a checkpoint: its configuration is ``config.json``, or, if
that file was lost, the copy saved in every checkpoint's metadata. A ``config.json`` without
checkpoints (a run that failed before its first save) binds nothing. Training holds
``train.lock`` (the holder's pid and host) while it runs, so two runs never write one workdir.
"""

from __future__ import annotations

import json
import os
import socket
import time
import warnings
from pathlib import Path

from ife_jax.train.checkpointing import Checkpointer, saved_steps
from ife_jax.train.config import TrainConfig

CONFIG_FILE = "config.json"
LOCK_FILE = "train.lock"


def check_directory(workdir: str | Path, *, must_exist: bool) -> Path:
    """``workdir`` as an absolute path, checked to be a directory (or absent, if allowed).

    Raises:
      FileNotFoundError: if it must exist and does not.
      ValueError: if it is a file.
    """
    path = Path(workdir).absolute()
    if path.exists() and not path.is_dir():
        raise ValueError(f"workdir {path} is a file, not a directory")
    if must_exist and not path.exists():
        raise FileNotFoundError(f"{path} holds no training run (no such directory)")
    return path


def check_writable_folder(path: str | Path, *, what: str) -> Path:
    """``path`` as an absolute path, checked (without creating anything) to be a folder that
    exists and can be written, or one that can be created.

    Args:
      path: the folder.
      what: how error messages name it (``"--output"``, ``"the report folder"``).

    Raises:
      ValueError: naming ``what`` and the path, if it (or the folder it would be created in)
        is a file or cannot be written.
    """
    path = Path(path).absolute()
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(f"{what} {path}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"{what} {path}: {existing} is not writable")
    return path


def has_checkpoints(workdir: str | Path) -> bool:
    """Whether ``workdir`` holds a finished checkpoint (recent or best)."""
    return bool(saved_steps(Path(workdir) / "checkpoints") or saved_steps(Path(workdir) / "best"))


def _parse(path: Path) -> TrainConfig:
    try:
        return TrainConfig.from_json(path.read_text())
    except ValueError as err:  # JSONDecodeError is a ValueError
        raise ValueError(f"{path}: {err}") from None


def _recover(workdir: Path) -> TrainConfig | None:
    """The configuration saved in the newest checkpoint's metadata (``None`` if none has it)."""
    checkpointer = Checkpointer(workdir, read_only=True)
    try:
        for best in (False, True):
            for step in reversed(checkpointer.steps(best=best)):
                try:
                    meta = checkpointer.read_meta(step, best=best)
                except ValueError:
                    continue
                if "config" in meta:
                    return TrainConfig.from_dict(meta["config"])
    finally:
        checkpointer.close()
    return None


def saved_config(workdir: str | Path) -> TrainConfig | None:
    """The configuration of the run in ``workdir``; ``None`` if it holds no checkpoint.

    ``config.json`` if present, else the copy in the checkpoints' metadata (with a warning).
    Reads only; writes nothing.

    Raises:
      ValueError: if ``config.json`` is malformed, or if the workdir holds checkpoints but
        neither ``config.json`` nor a configuration in their metadata.
    """
    workdir = check_directory(workdir, must_exist=True)
    path = workdir / CONFIG_FILE
    if path.exists():
        return _parse(path)
    if not has_checkpoints(workdir):
        return None
    config = _recover(workdir)
    if config is None:
        raise ValueError(
            f"{workdir} holds checkpoints but no {CONFIG_FILE}, and the checkpoints do not record "
            f"their configuration; put the run's {CONFIG_FILE} back into {workdir} (nothing was "
            "changed), or train in a new workdir"
        )
    warnings.warn(
        f"{path} is missing; using the configuration saved in the run's checkpoints",
        RuntimeWarning,
        stacklevel=2,
    )
    return config


def write_config(workdir: Path, config: TrainConfig) -> None:
    """Writes ``config.json`` atomically (a crash never leaves half a file)."""
    tmp = workdir / f".{CONFIG_FILE}.{os.getpid()}.tmp"
    tmp.write_text(config.to_json() + "\n")
    os.replace(tmp, workdir / CONFIG_FILE)


class WorkdirLockedError(RuntimeError):
    """Another live process trains in this workdir; the message names it."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class WorkdirLock:
    """``<workdir>/train.lock``, holding ``{"pid", "host", "since"}`` of the training process.

    Taken with an atomic hard link of a complete file, so the lock file is never seen half
    written. A lock left by a dead process on this host is taken over with a warning; a lock
    held by a live process, or by one on another host (whose liveness cannot be checked),
    raises :class:`WorkdirLockedError` naming it. Use as a context manager.
    """

    def __init__(self, workdir: str | Path):
        self.path = Path(workdir).absolute() / LOCK_FILE
        self.held = False

    def holder(self) -> dict | None:
        """``{"pid", "host", "text"}`` of the lock file (``None`` if there is no lock)."""
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return None
        try:
            holder = json.loads(text)
            return {"pid": int(holder["pid"]), "host": str(holder["host"]), "text": text}
        except (ValueError, KeyError, TypeError):
            return {"pid": None, "host": None, "text": text}

    def acquire(self) -> None:
        """Takes the lock.

        Raises:
          WorkdirLockedError: if a live process (or one on another host) holds it.
        """
        me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}
        tmp = self.path.with_name(f".{LOCK_FILE}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(me) + "\n")
        try:
            for _ in range(3):
                try:
                    os.link(tmp, self.path)
                except FileExistsError:
                    self._take_over_if_stale()
                    continue
                self.held = True
                return
            raise WorkdirLockedError(f"{self.path}: could not take the lock (contended)")
        finally:
            tmp.unlink(missing_ok=True)

    def _take_over_if_stale(self) -> None:
        holder = self.holder()
        if holder is None:
            return  # released meanwhile
        pid, host = holder["pid"], holder["host"]
        here = socket.gethostname()
        if pid is None:
            why = f"its content is not a lock ({holder['text'][:80]!r})"
        elif host != here:
            raise WorkdirLockedError(
                f"{self.path.parent} is locked by process {pid} on host {host}, which may still "
                f"be training in it; if that run is gone, delete {self.path}"
            )
        elif _alive(pid):
            raise WorkdirLockedError(
                f"{self.path.parent} is locked by process {pid} on {host}, which is still "
                f"training in it; wait for it to finish (or stop it), or use another workdir"
            )
        else:
            why = f"process {pid} on {host} that held it has ended"
        warnings.warn(
            f"taking over the stale lock {self.path}: {why}", RuntimeWarning, stacklevel=3
        )
        # Move the stale lock aside under a unique name, then check that what moved is the
        # stale lock: if another process took it over in between, put its fresh lock back.
        aside = self.path.with_name(f".{LOCK_FILE}.stale.{os.getpid()}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return
        if aside.read_text() != holder["text"]:
            try:
                os.link(aside, self.path)
            except FileExistsError:
                pass
        aside.unlink(missing_ok=True)

    def release(self) -> None:
        if self.held:
            holder = self.holder()
            if holder is not None and holder["pid"] == os.getpid():
                self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self) -> WorkdirLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
