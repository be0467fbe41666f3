"""The SLURM backend against a real single-node SLURM (tests/slurm_cluster.py): array jobs, two
processes per run, refusals in one line, and scancel / time-limit warning / scontrol requeue
each stopping a 2-process run at one agreed step with a checkpoint it resumes from, its losses
those of an unbroken run.

Skips where SLURM cannot be installed or started, unless GENLAB_REQUIRE_SLURM=1 (CI).
"""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import LM_CONFIG, SHAKESPEARE, genlab, train_args
from slurm_cluster import LocalSlurm, Unavailable

from launch import backends, sweep
from train.errors import UserError
from train.logging import read_metrics

ONE_DEVICE = {"XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
# The interrupted run: each interruption pauses it a few steps after a new checkpoint, so three
# of them land long before its end (a step takes milliseconds, its start-up seconds).
STEPS = 300
# The LR schedule does not depend on train.steps, so shorter runs share the reference's losses.
COMMON = {"data.path": str(SHAKESPEARE), "train.log_every": 1, "train.eval_every": 1000}
DEADLINE_S = 600  # only catches hangs; nothing here assumes how fast the machine is


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalSlurm]:
    try:
        slurm = LocalSlurm(cpus=4).start()
    except Unavailable as error:
        if os.environ.get("GENLAB_REQUIRE_SLURM") == "1":
            pytest.fail(f"GENLAB_REQUIRE_SLURM=1 but {error}")
        pytest.skip(str(error))
    try:
        yield slurm
    finally:
        slurm.stop()


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[int, float]:
    """train/loss by step of an unbroken one-process run of the same config."""
    workdir = tmp_path_factory.mktemp("reference")
    overrides = {**COMMON, "train.steps": STEPS, "train.checkpoint_every": 1000}
    genlab(
        *train_args(workdir, *(f"--config.{k}={v}" for k, v in overrides.items())),
        env=ONE_DEVICE,
        check=True,
    )
    return _losses(workdir)


def _losses(workdir: Path) -> dict[int, float]:
    return {r["step"]: r["train/loss"] for r in read_metrics(workdir) if "train/loss" in r}


def _sweep_file(tmp_path: Path, overrides: dict, axis: dict) -> str:
    path = tmp_path / "slurm_sweep.py"
    data = {"base": f"{LM_CONFIG}:test", "overrides": {**COMMON, **overrides}, "axes": [axis]}
    path.write_text(f"def get_sweep():\n    return {data!r}\n")
    return str(path)


def _wait(
    ready: Callable[[], bool],
    what: str,
    log: Path | None = None,
    poll_s: float = 0.2,
    hopeless: Callable[[], bool] = lambda: False,
) -> None:
    """Poll until `ready()`; fail with the log's tail after the deadline or once `hopeless()`."""
    deadline = time.monotonic() + DEADLINE_S
    while not ready():
        if time.monotonic() > deadline or hopeless():
            tail = log.read_text()[-2000:] if log and log.is_file() else ""
            pytest.fail(f"no {what}\n{tail}")
        time.sleep(poll_s)


def _manifest(root: Path) -> list[dict]:
    return json.loads((root / "sweep.json").read_text())["runs"]


def _status(cluster: LocalSlurm, file: str, root: Path) -> list[dict]:
    """`genlab sweep --status` (which also rewrites the manifest); the manifest's runs."""
    genlab("sweep", file, "--root", str(root), "--status", env=cluster.env, check=True)
    return _manifest(root)


def _queue_empty(cluster: LocalSlurm) -> bool:
    return cluster.run("squeue", "-h").stdout.strip() == ""


def _restarts(cluster: LocalSlurm, job: str) -> int:
    found = re.search(r"Restarts=(\d+)", cluster.run("scontrol", "show", "job", job).stdout)
    return int(found.group(1)) if found else -1


def _pause_after_checkpoint(workdir: Path, newer_than: int) -> int:
    """Wait for a checkpoint newer than `newer_than`, then stop (SIGSTOP) the trainer, so that
    what the test does next lands mid-run however fast the machine is; its pid."""
    log = workdir / sweep.LOG_FILE
    _wait(
        lambda: max(sweep.checkpoint_steps(workdir), default=-1) > newer_than,
        f"checkpoint after step {newer_than}",
        log,
        poll_s=0.01,
        hopeless=lambda: log.is_file() and log.read_text().rstrip().endswith("finished"),
    )
    lock = workdir / ".genlab_lock"
    _wait(lock.is_file, "workdir lock")
    pid = json.loads(lock.read_text())["pid"]
    os.kill(pid, signal.SIGSTOP)
    return pid


@pytest.mark.slow
def test_sweep_is_one_array_job_two_processes_per_run_then_compare_and_skip(
    cluster, reference, tmp_path
):
    file = _sweep_file(
        tmp_path,
        {"train.steps": 8, "train.checkpoint_every": 4},
        {"grid": {"optim.lr": [1e-3, 3e-3]}},  # 1e-3 is the config's own: the reference run
    )
    root = tmp_path / "root"
    launch = ("sweep", file, "--root", str(root), "--backend", "slurm", "--tasks_per_node", "2")
    result = genlab(*launch, env={**cluster.env, **ONE_DEVICE}, check=True)
    assert "0 already done, 2 to run" in result.stdout
    jobs = [run["job_id"] for run in _manifest(root)]
    array = jobs[0].split("_")[0]
    assert jobs == [f"{array}_0", f"{array}_1"]  # one array job, one task per run
    _wait(lambda: _queue_empty(cluster), "end of the array job")
    runs = _status(cluster, file, root)
    assert [(r["status"], r["job_id"], r["checkpoint"]) for r in runs] == [
        ("done", job, 8) for job in jobs
    ]
    first = Path(runs[0]["workdir"])
    log = (first / sweep.LOG_FILE).read_text()
    assert f"[slurm job {jobs[0]}, attempt 1, task 1] finished" in log  # two processes ran it
    assert f"[slurm job {jobs[0]}, attempt 1, task 0] finished" in log
    losses = _losses(first)
    assert sorted(losses) == list(range(1, 9))
    np.testing.assert_allclose(
        [losses[s] for s in range(1, 9)], [reference[s] for s in range(1, 9)], atol=1e-5, rtol=0
    )

    report = tmp_path / "report"
    genlab("compare", str(root), "--metric", "train/loss", "--out", str(report), check=True)
    rows = [r for r in csv.DictReader((report / "compare.csv").open())]
    assert {r["config differences"] for r in rows if not r["run"].startswith("reference")} == {
        "optim.lr=0.001",
        "optim.lr=0.003",
    }

    again = genlab(*launch, env=cluster.env, check=True)
    assert "2 already done, 0 to run" in again.stdout and "submitted" not in again.stdout
    assert [r["job_id"] for r in _manifest(root)] == jobs


@pytest.mark.slow
def test_scancel_time_limit_warning_and_requeue_each_resume_with_unbroken_losses(
    cluster, reference, tmp_path
):
    file = _sweep_file(
        tmp_path, {"train.steps": STEPS, "train.checkpoint_every": 5}, {"zip": {"seed": [1337]}}
    )
    root = tmp_path / "root"
    launch = ("sweep", file, "--root", str(root), "--backend", "slurm", "--timeout_min", "10")
    launch += ("--tasks_per_node", "2")  # every stop must land on one step in both processes
    env = {**cluster.env, **ONE_DEVICE}
    genlab(*launch, env=env, check=True)
    (run,) = _manifest(root)
    workdir, log = Path(run["workdir"]), Path(run["workdir"]) / sweep.LOG_FILE

    def stopped_at() -> list[int]:
        text = log.read_text() if log.is_file() else ""
        return [
            int(s) for s in re.findall(r"stopped by SIGTERM with a checkpoint at step (\d+)", text)
        ]

    def interrupt(command: list[str], newer_than: int) -> int:
        """Pause the trainer after a new checkpoint, run `command`, let it go on; the step of
        the checkpoint it saved on its way out."""
        count = len(stopped_at())
        pid = _pause_after_checkpoint(workdir, newer_than)
        done = cluster.run(*command)
        assert done.returncode == 0, done.stderr
        os.kill(pid, signal.SIGCONT)
        _wait(lambda: len(stopped_at()) > count, f"stop after {command}", log)
        return stopped_at()[-1]

    # scancel: SIGTERM to every task; the trainer saves and exits 143, the job is CANCELLED.
    first = interrupt(["scancel", run["job_id"]], newer_than=0)
    _wait(lambda: _queue_empty(cluster), "end of the cancelled job", log)
    (cancelled,) = _status(cluster, file, root)
    assert cancelled["status"] == "failed" and cancelled["slurm_state"] == "CANCELLED"
    assert cancelled["checkpoint"] == first
    assert f"checkpoint at step {first} (exit 143)" in log.read_text()

    # Launching the sweep again submits the run again; it resumes from that checkpoint.
    genlab(*launch, env=env, check=True)
    (run,) = _manifest(root)
    assert run["job_id"] != cancelled["job_id"] and run["status"] == "pending"
    # SLURM's warning before the time limit (--signal=USR2@N): checkpoint, then requeue.
    second = interrupt(["scancel", "--signal=USR2", run["job_id"]], newer_than=first)
    assert second > first
    _wait(lambda: "near its time limit: requeued" in log.read_text(), "self-requeue", log)
    _wait(lambda: _restarts(cluster, run["job_id"]) == 1, "restart count", log)
    (requeued,) = _status(cluster, file, root)
    assert requeued["status"] in ("requeued", "running") and requeued["restarts"] == 1

    # Preemption as SLURM does it: `scontrol requeue` (SIGTERM, then the job runs again).
    third = interrupt(["scontrol", "requeue", run["job_id"]], newer_than=second)
    assert third > second
    _wait(lambda: _queue_empty(cluster), "the run's end", log)
    (finished,) = _status(cluster, file, root)
    assert finished["status"] == "done" and finished["slurm_state"] == "COMPLETED"
    assert finished["restarts"] == 2 and finished["checkpoint"] == STEPS
    text = log.read_text()
    for step in (first, second, third):
        assert f"resumed from the checkpoint of step {step}" in text
    losses = _losses(workdir)
    assert sorted(losses) == list(range(1, STEPS + 1))
    np.testing.assert_allclose(
        [losses[s] for s in sorted(losses)], [reference[s] for s in sorted(losses)], atol=1e-5
    )


@pytest.mark.parametrize(
    ("flags", "named", "reason"),
    [
        (["--gpus_per_node", "1"], "gpus_per_node=1", "Invalid generic resource (gres)"),
        (["--partition", "nope"], "partition=nope", "Invalid partition name specified"),
        (["--mem_gb_per_task", "100000"], "mem_gb_per_task=100000", "Memory specification"),
    ],
)
@pytest.mark.slow
def test_sbatch_refusals_are_one_line_naming_the_resource(cluster, tmp_path, flags, named, reason):
    file = _sweep_file(tmp_path, {}, {"grid": {"optim.lr": [1e-3]}})
    result = genlab(
        "sweep", file, "--root", str(tmp_path / "root"), "--backend", "slurm", *flags,
        env=cluster.env,
    )  # fmt: skip
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("genlab: error: sbatch refused the job (")
    assert named in line and reason in line


def test_cpu_jobs_ask_for_no_gpus_and_tasks_follow_gpus_unless_given():
    cpu = backends.slurm_parameters({"gpus_per_node": 0, "cpus_per_task": 2, "mem_gb_per_task": 3})
    assert "gpus_per_node" not in cpu and cpu["tasks_per_node"] == 1
    assert cpu["cpus_per_task"] == 2 and cpu["mem_gb"] == 3
    gpu = backends.slurm_parameters({"gpus_per_node": 4, "mem_gb_per_task": 8, "timeout_min": 60})
    assert gpu["gpus_per_node"] == 4 and gpu["tasks_per_node"] == 4 and gpu["mem_gb"] == 32
    assert gpu["slurm_additional_parameters"] == {"requeue": True, "signal": "USR2@90"}
    assert (
        backends.slurm_parameters({"gpus_per_node": 8, "tasks_per_node": 1})["tasks_per_node"] == 1
    )
    # A short time limit is warned a fifth of it ahead, never before the run starts.
    short = backends.slurm_parameters({"timeout_min": 2})["slurm_additional_parameters"]
    assert short["signal"] == "USR2@24"
    for resources, message in [
        ({"tasks_per_node": 0}, "tasks_per_node=0 is not allowed; allowed: an integer >= 1"),
        ({"gpus_per_node": -1}, "gpus_per_node=-1 is not allowed; allowed: an integer >= 0"),
        ({"cpus_per_task": 1.5}, "cpus_per_task=1.5 is not allowed"),
        ({"mem_gb_per_task": 0}, "mem_gb_per_task=0 is not allowed; allowed: a number of GB"),
        ({"mem_gb": 4, "mem_gb_per_task": 1}, "give mem_gb_per_task or mem_gb"),
        ({"partition": ""}, "partition='' is not allowed; allowed: a name"),
    ]:
        with pytest.raises(UserError, match=re.escape(message)):
            backends.slurm_parameters(resources)


def test_sbatch_reasons_name_the_resource_they_are_about():
    given = {"tasks_per_node": 2, "cpus_per_task": 64, "partition": "cpu"}
    output = textwrap.dedent("""\
        sbatch: error: CPU count per node can not be satisfied
        sbatch: error: Batch job submission failed: Requested node configuration is not available
    """)
    error = str(backends.sbatch_refusal(output, given))
    assert error == (
        "sbatch refused the job (tasks_per_node=2, cpus_per_task=64): CPU count per node can "
        "not be satisfied; Requested node configuration is not available"
    )
    unreachable = "sbatch: error: fetch_config: DNS SRV lookup failed\nsbatch: fatal: Could not "
    assert str(
        backends.sbatch_refusal(unreachable + "establish a configuration source", given)
    ) == ("--backend slurm: sbatch failed: Could not establish a configuration source")
    unknown = str(backends.sbatch_refusal("sbatch: error: something new", given))
    assert unknown == (
        "sbatch refused the job (tasks_per_node=2, cpus_per_task=64, partition=cpu): something new"
    )
