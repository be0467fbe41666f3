"""Killed runs: SIGKILL loses only the steps since the last checkpoint and resumes bit for bit;
SIGTERM saves a checkpoint before exiting."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
from conftest import REPO, genlab, train_args

from train.checkpoint import Checkpoints

RUN = (
    "--config.train.steps=300",
    "--config.train.checkpoint_every=20",
    "--config.train.eval_every=100",
    "--config.train.log_every=20",
)


def _start(workdir) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "launch.cli", *train_args(workdir, *RUN)],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for_checkpoint(workdir, process: subprocess.Popen, at_least: int) -> list[int]:
    deadline = time.time() + 240
    while time.time() < deadline and process.poll() is None:
        steps = (
            Checkpoints(workdir, read_only=True).all_steps()
            if (workdir / "checkpoints").is_dir()
            else []
        )
        if steps and max(steps) >= at_least:
            return steps
        time.sleep(0.02)
    raise AssertionError(f"no checkpoint >= {at_least} before the run ended: {process.stderr}")


def _params(workdir, step: int):
    return ocp.StandardCheckpointer().restore(workdir / "checkpoints" / str(step) / "state")


def test_sigkill_then_restart_matches_uninterrupted_run_bitwise(tmp_path):
    genlab(*train_args(tmp_path / "straight", *RUN), check=True)

    killed = tmp_path / "killed"
    process = _start(killed)
    seen = _wait_for_checkpoint(killed, process, at_least=40)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL
    assert max(seen) < 300  # it really died mid-run
    genlab(*train_args(killed, *RUN), check=True)

    expected, resumed = _params(tmp_path / "straight", 300), _params(killed, 300)
    leaves_a = [np.asarray(x) for x in jax.tree.leaves(expected)]
    leaves_b = [np.asarray(x) for x in jax.tree.leaves(resumed)]
    assert len(leaves_a) == len(leaves_b) > 10
    for a, b in zip(leaves_a, leaves_b, strict=True):
        assert a.dtype == b.dtype and np.array_equal(a, b)


def test_sigterm_saves_a_checkpoint_and_exits(tmp_path):
    process = _start(tmp_path)
    _wait_for_checkpoint(tmp_path, process, at_least=20)
    os.kill(process.pid, signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM, stderr
    steps = Checkpoints(tmp_path, read_only=True).all_steps()
    stopped_at = int(stderr.split("at step ")[-1].split(";")[0])
    assert stopped_at in steps and stopped_at < 300
