"""Where sweep runs execute: here, one after another or N at a time, or on SLURM via submitit.

Commands are argument lists (never shell strings) and every run is an ordinary `genlab train`,
so an interrupted run resumes from its own checkpoints when the sweep is launched again.

On SLURM each run is one array task. Its body (`run_job`) runs `genlab train` in every task and
appends the output to the run's `sweep_run.log`. SLURM's warning before the time limit
(`--signal=USR2@N`) becomes SIGTERM for the trainer, which saves a checkpoint and exits 143, and
the job requeues itself; `scancel`, preemption and `scontrol requeue` send SIGTERM themselves.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from launch.sweep import LOG_FILE, Run, checkpoint_steps, run_status
from train.errors import UserError

SLURM_KEYS = (
    "nodes",
    "gpus_per_node",
    "tasks_per_node",
    "cpus_per_task",
    "mem_gb_per_task",
    "timeout_min",
    "partition",
    "account",
    "array_parallelism",
    "mem_gb",
    "constraint",
)
# Integer resources and their least value; memory is a positive number of GB; the rest are names.
INT_MINIMUMS = {
    "nodes": 1,
    "gpus_per_node": 0,
    "tasks_per_node": 1,
    "cpus_per_task": 1,
    "timeout_min": 1,
    "array_parallelism": 1,
}
MEMORY_KEYS = ("mem_gb_per_task", "mem_gb")
# SLURM signals this long before the time limit (a fifth of the limit when that is shorter), so
# the trainer has time to save before SIGKILL.
WARNING_SIGNAL = signal.SIGUSR2
WARNING_S = 90
# What `genlab train` exits with after a SIGTERM made it save a checkpoint and stop.
STOPPED_EXIT = 128 + signal.SIGTERM


def run_local(runs: list[Run], parallel: int = 1, devices_per_run: int = 0) -> dict[str, str]:
    """Run the commands here, `parallel` at a time; return each run's status.

    With `devices_per_run`, run slot i sees only GPUs [i*k, (i+1)*k) (CUDA_VISIBLE_DEVICES).
    """
    if parallel < 1:
        raise UserError(f"--parallel={parallel}: must be at least 1")
    status: dict[str, str] = {}
    queue = list(runs)
    active: dict[int, tuple[Run, subprocess.Popen]] = {}
    while queue or active:
        free = [slot for slot in range(parallel) if slot not in active]
        while queue and free:
            slot, run = free.pop(0), queue.pop(0)
            env = dict(os.environ)
            if devices_per_run:
                first = slot * devices_per_run
                env["CUDA_VISIBLE_DEVICES"] = ",".join(
                    str(d) for d in range(first, first + devices_per_run)
                )
            run.workdir.mkdir(parents=True, exist_ok=True)
            log = (run.workdir / LOG_FILE).open("a")
            active[slot] = (
                run,
                subprocess.Popen(run.command, env=env, stdout=log, stderr=subprocess.STDOUT),
            )
        for slot, (run, process) in list(active.items()):
            code = process.poll()
            if code is not None:
                status[run.name] = "done" if code == 0 else f"failed (exit {code})"
                print(f"[{status[run.name]}] {run.name}", flush=True)
                del active[slot]
        time.sleep(0.2)
    return status


# -- SLURM: resources ---------------------------------------------------------------------------
def resolve_resources(resources: dict[str, Any]) -> dict[str, Any]:
    """Check the sweep file's (or flags') resources and fill in tasks per node: one per GPU, as
    JAX's multi-controller runtime expects, or one without GPUs."""
    unknown = sorted(set(resources) - set(SLURM_KEYS))
    if unknown:
        raise UserError(
            f"slurm resources: unknown keys {unknown}; allowed: {', '.join(SLURM_KEYS)}"
        )
    given = {key: value for key, value in resources.items() if value is not None}
    for key, value in given.items():
        if key in INT_MINIMUMS:
            low = INT_MINIMUMS[key]
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise UserError(
                    f"slurm resource {key}={value!r} is not allowed; allowed: an integer >= {low}"
                )
        elif key in MEMORY_KEYS:
            if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
                raise UserError(
                    f"slurm resource {key}={value!r} is not allowed; allowed: a number of GB > 0"
                )
            if value == int(value):
                given[key] = int(value)  # `--mem_gb_per_task 8` arrives as 8.0
        elif not isinstance(value, str) or not value or value != value.strip():
            raise UserError(f"slurm resource {key}={value!r} is not allowed; allowed: a name")
    if all(key in given for key in MEMORY_KEYS):
        raise UserError("slurm resources: give mem_gb_per_task or mem_gb (per node), not both")
    if not given.get("gpus_per_node"):
        given.pop("gpus_per_node", None)  # a CPU job asks for no generic resources at all
    given.setdefault("tasks_per_node", given.get("gpus_per_node", 1))
    return given


def slurm_parameters(resources: dict[str, Any]) -> dict[str, Any]:
    """submitit's parameters for the resources: generic ones plus `slurm_`-prefixed ones."""
    given = resolve_resources(resources)
    plain = {"nodes", "gpus_per_node", "tasks_per_node", "cpus_per_task", "timeout_min", "mem_gb"}
    params: dict[str, Any] = {}
    for key, value in given.items():
        if key == "mem_gb_per_task":
            params["mem_gb"] = value * given["tasks_per_node"]  # SLURM's --mem is per node
        else:
            params[key if key in plain else f"slurm_{key}"] = value
    warning = min(WARNING_S, given.get("timeout_min", 5) * 60 // 5)  # submitit's default: 5 min
    params["slurm_additional_parameters"] = {
        "requeue": True,
        "signal": f"{WARNING_SIGNAL.name.removeprefix('SIG')}@{warning}",
    }
    return params


# Words of sbatch's reasons and the resources they are about.
REASON_RESOURCES = (
    ("generic resource", ("gpus_per_node",)),
    ("gres", ("gpus_per_node",)),
    ("gpu", ("gpus_per_node",)),
    ("ntasks-per-node", ("tasks_per_node",)),
    ("cpus-per-task", ("cpus_per_task",)),
    ("partition", ("partition",)),
    ("account", ("account",)),
    ("memory", ("mem_gb_per_task", "mem_gb")),
    ("time limit", ("timeout_min",)),
    ("feature", ("constraint",)),
    ("constraint", ("constraint",)),
    ("node count", ("nodes",)),
    (
        "node configuration is not available",
        ("nodes", "tasks_per_node", "cpus_per_task", "mem_gb_per_task", "mem_gb", "gpus_per_node"),
    ),
)


def sbatch_refusal(output: str, resources: dict[str, Any]) -> UserError:
    """One line for sbatch's refusal: the resources it is about and SLURM's own reason (or,
    where sbatch could not reach SLURM at all, its fatal error)."""
    reasons, fatal = [], []
    for line in output.strip().splitlines():
        _, found, reason = line.partition("error:")
        reason = reason.strip().removeprefix("Batch job submission failed:").strip()
        if found and reason and reason not in reasons:
            reasons.append(reason)
        fatal += [line.partition("fatal:")[2].strip()] if "fatal:" in line else []
    if fatal:  # e.g. no slurm.conf, or no controller to ask: not about the resources
        return UserError(f"--backend slurm: sbatch failed: {fatal[-1]}")
    reason = "; ".join(reasons) or " ".join(output.split()) or "no reason given"
    lowered = reason.lower()
    named = [
        key
        for words, keys in REASON_RESOURCES
        if words in lowered
        for key in keys
        if key in resources
    ]
    shown = ", ".join(f"{key}={resources[key]}" for key in dict.fromkeys(named or resources))
    return UserError(f"sbatch refused the job ({shown}): {reason}")


def submit_slurm(
    runs: list[Run], folder: Path, resources: dict[str, Any], cluster: str | None = "slurm"
) -> list[Any]:
    """Submit the runs as one submitit array job; `cluster="local"` runs the same path locally.

    A refusal by sbatch (or no SLURM here) is one line, not submitit's traceback.
    """
    import submitit
    from submitit.core.utils import FailedJobError, FailedSubmissionError

    given = resolve_resources(resources)
    try:
        executor = submitit.AutoExecutor(folder=str(folder / "submitit" / "%j"), cluster=cluster)
    except RuntimeError as error:  # submitit looks for srun first
        raise UserError(f"--backend slurm: no SLURM here ({error})") from None
    executor.update_parameters(name=folder.name, **slurm_parameters(given))
    try:
        with contextlib.redirect_stderr(io.StringIO()):  # submitit echoes sbatch's stderr
            return executor.map_array(
                run_job, [run.command for run in runs], [str(run.workdir) for run in runs]
            )
    except FailedJobError as error:  # sbatch exited non-zero; its stderr is the message
        raise sbatch_refusal(str(error), given) from None
    except (FailedSubmissionError, FileNotFoundError) as error:
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise UserError(f"--backend slurm: sbatch failed: {first}") from None


# -- SLURM: the job body ------------------------------------------------------------------------
def _latest(workdir: Path) -> int | None:
    return max(checkpoint_steps(workdir), default=None)


def _describe_exit(code: int, step: int | None) -> str:
    if code == 0:
        return "finished"
    if code == STOPPED_EXIT:
        return f"stopped by SIGTERM with a checkpoint at step {step} (exit {code})"
    if code < 0:
        return f"killed by {signal.Signals(-code).name} (latest checkpoint: step {step})"
    return f"failed with exit {code} (latest checkpoint: step {step})"


def run_job(command: list[str], workdir: str) -> int:
    """The body of every task of a SLURM job: run one `genlab train`, append its output to the
    run's log, and turn SLURM's time-limit warning into a checkpoint and a requeue.

    The trainer ignores the warning signal (it would otherwise die of it); this process answers
    it with SIGTERM, and task 0 requeues the job once the trainer has saved a newer checkpoint
    than the one it started from (a run that makes no progress is not requeued forever).
    """
    folder = Path(workdir)
    folder.mkdir(parents=True, exist_ok=True)
    job = os.environ.get("SLURM_JOB_ID", "?")
    if os.environ.get("SLURM_ARRAY_JOB_ID"):
        job = f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ.get('SLURM_ARRAY_TASK_ID')}"
    attempt = int(os.environ.get("SLURM_RESTART_COUNT", "0")) + 1
    rank = int(os.environ.get("SLURM_PROCID", "0"))
    where = f"[slurm job {job}, attempt {attempt}, task {rank}]"
    before = _latest(folder)
    warned = False
    with (folder / LOG_FILE).open("a") as log:
        _note(log, f"{where} starts; latest checkpoint: step {before}")
        previous = signal.signal(WARNING_SIGNAL, signal.SIG_IGN)  # inherited by the trainer
        try:
            child = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)

            def stop(signum: int, frame: Any) -> None:
                nonlocal warned
                warned = warned or signum == WARNING_SIGNAL
                if child.poll() is None:
                    child.send_signal(signal.SIGTERM)

            previous_term = signal.signal(signal.SIGTERM, stop)
            signal.signal(WARNING_SIGNAL, stop)
            try:
                code = child.wait()
            finally:
                signal.signal(signal.SIGTERM, previous_term)
        finally:
            signal.signal(WARNING_SIGNAL, previous)
        after = _latest(folder)
        outcome = _describe_exit(code, after)
        _note(log, f"{where} {outcome}")
        if code == 0:
            return 0
        if warned and code == STOPPED_EXIT:
            if rank != 0:
                return code
            if after is not None and (before is None or after > before):
                result = subprocess.run(
                    ["scontrol", "requeue", os.environ.get("SLURM_JOB_ID", "")],
                    capture_output=True,
                    text=True,
                )
                if result.returncode == 0:
                    _note(log, f"{where} near its time limit: requeued")
                    return code
                said = " ".join((result.stdout + result.stderr).split())
                _note(log, f"{where} near its time limit: scontrol requeue failed: {said}")
            else:
                _note(log, f"{where} near its time limit without a new checkpoint: not requeued")
    raise RuntimeError(f"{where} {shlex.join(command)}: {outcome}")


def _note(log: Any, line: str) -> None:
    log.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {line}\n")
    log.flush()


# -- SLURM: what the queue says -----------------------------------------------------------------
PENDING_STATES = {"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD"}
RUNNING_STATES = {
    "RUNNING",
    "CONFIGURING",
    "COMPLETING",
    "SUSPENDED",
    "STOPPED",
    "RESIZING",
    "SIGNALING",
    "STAGE_OUT",
}


def _task_ids(spec: str) -> list[str]:
    """`0-3%2`, `1,3,5-6` or `7` (a pending array's tasks) as single ids."""
    ids: list[str] = []
    for part in spec.split("%")[0].split(","):
        first, _, last = part.partition("-")
        if first.isdigit() and last.isdigit():
            ids += [str(i) for i in range(int(first), int(last) + 1)]
        elif first.isdigit():
            ids.append(first)
    return ids


def slurm_jobs(env: dict[str, str] | None = None) -> dict[str, dict[str, str]] | None:
    """Every job SLURM still knows (`scontrol show job -o`), by job id and by `ARRAY_TASK` id;
    None where SLURM cannot be asked."""
    try:
        result = subprocess.run(
            ["scontrol", "show", "job", "-o"], capture_output=True, text=True, env=env, timeout=60
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if result.returncode != 0:
        return None
    jobs: dict[str, dict[str, str]] = {}
    for line in result.stdout.splitlines():
        record = dict(re.findall(r"(\w+)=(\S*)", line))
        if "JobId" not in record:
            continue
        jobs[record["JobId"]] = record
        array = record.get("ArrayJobId")
        for task in _task_ids(record.get("ArrayTaskId", "")) if array else []:
            jobs[f"{array}_{task}"] = record
    return jobs


def job_status(record: dict[str, str] | None, finished: bool) -> tuple[str, str]:
    """(pending | running | requeued | done | failed, SLURM's own state) for one run's job."""
    state = (record or {}).get("JobState", "")
    restarts = int((record or {}).get("Restarts", "0") or 0)
    if finished:
        return "done", state
    if state in PENDING_STATES:
        return ("requeued" if restarts or state.startswith("REQUEUE") else "pending"), state
    if state in RUNNING_STATES:
        return "running", state
    return "failed", state or "gone from the queue"


def slurm_status(runs: list[Run], job_ids: dict[str, str]) -> dict[str, dict[str, Any]]:
    """Each run that has a SLURM job: its status word, job id, SLURM's state and restarts.

    Finished runs are `done` whatever SLURM says; a job SLURM no longer knows (it forgets
    ended jobs after MinJobAge) and whose run did not finish is `failed`.
    """
    jobs = slurm_jobs() if job_ids else None
    details: dict[str, dict[str, Any]] = {}
    for run in runs:
        job = job_ids.get(run.name)
        if job is None:
            continue
        finished = run_status(run) == "done"
        if jobs is None:
            status, state, restarts = ("done" if finished else "unknown"), "no SLURM here", 0
        else:
            record = jobs.get(job)
            status, state = job_status(record, finished)
            restarts = int((record or {}).get("Restarts", "0") or 0)
        details[run.name] = {
            "status": status,
            "job_id": job,
            "slurm_state": state,
            "restarts": restarts,
        }
        reason = (record or {}).get("Reason", "None") if jobs is not None else "None"
        if status in ("pending", "requeued") and reason != "None":
            details[run.name]["slurm_reason"] = reason  # e.g. PartitionConfig: it never fits
    return details
