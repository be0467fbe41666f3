"""Where sweep runs execute: here, one after another or N at a time, or on SLURM via submitit.

Commands are argument lists (never shell strings) and every run is an ordinary `genlab train`,
so an interrupted run resumes from its own checkpoints when the sweep is launched again.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Any

from launch.sweep import Run
from train.errors import UserError

SLURM_KEYS = (
    "nodes",
    "gpus_per_node",
    "tasks_per_node",
    "cpus_per_task",
    "timeout_min",
    "partition",
    "account",
    "array_parallelism",
    "mem_gb",
    "constraint",
)


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
            log = (run.workdir / "sweep_run.log").open("a")
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


def slurm_parameters(resources: dict[str, Any]) -> dict[str, Any]:
    """submitit's parameter names for the sweep file's (or flags') SLURM resources."""
    unknown = sorted(set(resources) - set(SLURM_KEYS))
    if unknown:
        raise UserError(
            f"slurm resources: unknown keys {unknown}; allowed: {', '.join(SLURM_KEYS)}"
        )
    params: dict[str, Any] = {}
    plain = {"nodes", "gpus_per_node", "tasks_per_node", "cpus_per_task", "timeout_min", "mem_gb"}
    for key, value in resources.items():
        if value is None:
            continue
        params[key if key in plain else f"slurm_{key}"] = value
    # One process per GPU, as jax.distributed expects under SLURM, unless told otherwise.
    if "gpus_per_node" in params and "tasks_per_node" not in params:
        params["tasks_per_node"] = params["gpus_per_node"]
    return params


def execute(command: list[str]) -> int:
    """The job body: run one genlab command in the job's environment; fail the job if it fails."""
    code = subprocess.run(command, check=False).returncode
    if code != 0:
        raise RuntimeError(f"{command} exited with {code}")
    return code


def submit_slurm(
    runs: list[Run], folder: Path, resources: dict[str, Any], cluster: str | None = "slurm"
) -> list[Any]:
    """Submit the runs as one submitit array job; `cluster="local"` runs the same path locally."""
    import submitit

    executor = submitit.AutoExecutor(folder=str(folder / "submitit" / "%j"), cluster=cluster)
    executor.update_parameters(name=folder.name, **slurm_parameters(resources))
    return executor.map_array(execute, [run.command for run in runs])
