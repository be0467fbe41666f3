"""Multi-process training through jax.distributed: 2 processes x 4 CPU devices behave like one
process with 8 devices, and resume from the checkpoint they wrote together."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
from conftest import REPO, genlab, train_args

from launch.distributed import free_port
from train.logging import read_metrics

FOUR_DEVICES = {"XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
STEPS = (
    "--config.train.log_every=1",
    "--config.train.checkpoint_every=4",
    "--config.train.eval_every=4",
)


def _losses(workdir) -> dict[int, float]:
    return {r["step"]: r["train/loss"] for r in read_metrics(workdir) if "train/loss" in r}


def test_two_processes_match_one_process_and_resume(tmp_path):
    genlab(*train_args(tmp_path / "single", *STEPS, "--config.train.steps=8"), check=True)

    multi = tmp_path / "multi"
    genlab(
        *train_args(multi, *STEPS, "--config.train.steps=4"),
        "--num_processes",
        "2",
        env=FOUR_DEVICES,
        check=True,
    )
    assert (multi / "checkpoints" / "4").is_dir()
    resumed = genlab(
        *train_args(multi, *STEPS, "--config.train.steps=8"),
        "--num_processes",
        "2",
        env=FOUR_DEVICES,
        check=True,
    )
    assert resumed.stdout.count("resumed from the checkpoint of step 4") == 1  # process 0 only

    single, both = _losses(tmp_path / "single"), _losses(multi)
    assert sorted(both) == list(range(1, 9))
    np.testing.assert_allclose(
        [both[s] for s in range(1, 9)], [single[s] for s in range(1, 9)], atol=1e-5, rtol=0
    )


def test_unreachable_coordinator_gives_up_after_its_timeout_with_one_line(tmp_path):
    result = genlab(
        *train_args(tmp_path / "w"),
        "--coordinator",
        "127.0.0.1:9",
        "--process_count",
        "2",
        "--process_id",
        "1",
        "--distributed_timeout",
        "2",
        env=FOUR_DEVICES,
    )
    assert result.returncode == 2  # rather than waiting for the helper's hang timeout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "127.0.0.1:9: unreachable after 2s" in lines[0]


def test_sigterm_to_one_process_stops_both_at_one_step_with_its_checkpoint(tmp_path):
    """A preemption notice reaching one host: every process saves the same step and exits 143
    (not one saving while the other trains on, which hangs both); the run resumes from it."""
    workdir, coordinator = tmp_path / "multi", f"127.0.0.1:{free_port()}"
    args = train_args(workdir, *STEPS, "--config.train.steps=100000", "--coordinator", coordinator)
    logs = [tmp_path / f"process{i}.log" for i in (0, 1)]  # files: a full pipe would stall it
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "launch.cli", *args, "--process_count", "2", "--process_id", i],
            cwd=REPO,
            env={**os.environ, **FOUR_DEVICES},
            stdout=log.open("w"),
            stderr=subprocess.STDOUT,
        )
        for i, log in zip(("0", "1"), logs, strict=True)
    ]
    try:
        deadline = time.monotonic() + 600  # catches hangs only
        while not (workdir / "checkpoints" / "4").is_dir():
            assert time.monotonic() < deadline and all(p.poll() is None for p in processes)
            time.sleep(0.2)
        processes[1].send_signal(signal.SIGTERM)
        for p in processes:
            p.wait(timeout=600)
    finally:
        for p in processes:
            p.kill()
    said = [log.read_text() for log in logs]
    assert [p.returncode for p in processes] == [143, 143], said[1][-2000:]
    stops = [re.findall(r"stopped by signal 15 at step (\d+)", text) for text in said]
    assert stops[0] == stops[1] and len(stops[0]) == 1, stops
    stop = int(stops[0][0])
    assert (workdir / "checkpoints" / str(stop)).is_dir()

    total = f"--config.train.steps={stop + 2}"
    resumed = genlab(
        *train_args(workdir, *STEPS, total), "--num_processes", "2", env=FOUR_DEVICES, check=True
    )
    assert f"resumed from the checkpoint of step {stop}" in resumed.stdout
    genlab(*train_args(tmp_path / "single", *STEPS, total), check=True)
    single, both = _losses(tmp_path / "single"), _losses(workdir)
    assert sorted(both) == list(range(1, stop + 3))
    np.testing.assert_allclose(
        [both[s] for s in sorted(both)], [single[s] for s in sorted(both)], atol=1e-5, rtol=0
    )
