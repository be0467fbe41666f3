"""A run's folder: usable, held by one training process at a time, resumed only by its own config.

The lock is an advisory `flock` on the folder itself, so it creates nothing there and the kernel
drops it when its process dies, however it dies: a killed run never blocks its resume. While it
is held, `.genlab_lock` names the holder (process, host, command) for the error a second process
gets; it is removed when the holder ends normally.
"""

from __future__ import annotations

import fcntl
import json
import os
import platform
import shutil
import sys
from pathlib import Path

import ml_collections

from train.errors import UserError
from train.metadata import CONFIG_FILE, flat_settings

LOCK_FILE = ".genlab_lock"
# What a resumed run must share with the run that wrote the checkpoints: the task and the model,
# less the model settings that say how it computes rather than what its parameters are.
FIXED_GROUPS = ("task", "model")
HOW_IT_COMPUTES = ("attention_impl", "remat", "dtype", "dropout", "attention_dropout")
# Filled in by the task when the config leaves them 0 (the tokenizer's size).
FILLED_BY_TASK = ("model.vocab_size",)


def prepare_workdir(workdir: Path) -> Path:
    """`workdir`, created if missing; a one-line error if it is a file or cannot be written."""
    workdir = Path(workdir)
    if workdir.exists() and not workdir.is_dir():
        raise UserError(f"--workdir {workdir} is a file; give a folder (new or a run's)")
    try:
        workdir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"--workdir {workdir} cannot be created: {error.strerror}") from None
    if not os.access(workdir, os.W_OK | os.X_OK):
        raise UserError(f"--workdir {workdir} is not writable; give a folder you can write")
    return workdir


class WorkdirLock:
    """Exclusive hold of a workdir for one training run (see the module docstring)."""

    def __init__(self, workdir: Path):
        self.workdir = Path(workdir)
        self._fd: int | None = None

    def acquire(self) -> WorkdirLock:
        fd = os.open(self.workdir, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise UserError(
                f"--workdir {self.workdir} is in use by {self._holder()}; wait for that run to "
                "end (or stop it) before resuming, or use another --workdir"
            ) from None
        self._fd = fd
        holder = {"pid": os.getpid(), "host": platform.node(), "command": sys.argv}
        (self.workdir / LOCK_FILE).write_text(json.dumps(holder) + "\n")
        return self

    def _holder(self) -> str:
        try:
            holder = json.loads((self.workdir / LOCK_FILE).read_text())
        except (OSError, ValueError):
            return "another process"
        command = " ".join(str(part) for part in holder.get("command", []))[:120]
        return f"process {holder.get('pid')} on {holder.get('host')} ({command})"

    def release(self) -> None:
        if self._fd is None:
            return
        (self.workdir / LOCK_FILE).unlink(missing_ok=True)
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None


def check_same_run(config: ml_collections.ConfigDict, workdir: Path) -> None:
    """A workdir that holds a run may only be resumed with the same task and model settings."""
    saved_path = Path(workdir) / CONFIG_FILE
    if not saved_path.is_file():
        return
    saved = json.loads(saved_path.read_text())
    new = json.loads(json.dumps(config.to_dict(), default=str))  # tuples as the file has them
    differences = []
    for group in FIXED_GROUPS:
        before, after = flat_settings(saved.get(group), group), flat_settings(new.get(group), group)
        for key in sorted(before):  # keys added to genlab after the run was saved are not checked
            if key.rsplit(".", 1)[-1] in HOW_IT_COMPUTES:
                continue
            if key in FILLED_BY_TASK and not after.get(key):
                continue
            if before.get(key) != after.get(key):
                differences.append(f"{key}={after.get(key)!r} (the run has {before.get(key)!r})")
    if differences:
        shown = "; ".join(differences[:3]) + ("; ..." if len(differences) > 3 else "")
        raise UserError(
            f"--workdir {workdir} holds a run with other task/model settings: {shown}; resume it "
            f"with `genlab train --workdir {workdir}` alone, or use a new --workdir"
        )


def check_room(workdir: Path, needed_bytes: int, what: str) -> None:
    """Refuse, in one line, to start writing `what` where it cannot fit: a checkpoint that runs
    out of disk half-way fails in Orbax's background threads, in many tracebacks."""
    free = shutil.disk_usage(workdir).free
    needed = int(needed_bytes * 1.1) + (1 << 20)  # metadata and a margin
    if free < needed:
        raise UserError(
            f"{what} needs about {needed / 2**20:.1f} MiB in {workdir} but {free / 2**20:.1f} MiB "
            "are free; free some space (the run resumes from its last checkpoint)"
        )
