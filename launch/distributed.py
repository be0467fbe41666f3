"""Multi-process start-up: JAX's own multi-controller runtime, from flags or the environment.

One process per host (or per GPU) runs the same `genlab train` command; `jax.distributed` connects
them. On SLURM and TPU VMs the coordinator, process count and id come from the environment; on one
machine `--num_processes N` starts N local processes for testing.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

from train.errors import UserError

DEFAULT_TIMEOUT_S = 60


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def initialize(
    coordinator: str | None,
    process_count: int | None,
    process_id: int | None,
    timeout_s: int = DEFAULT_TIMEOUT_S,
) -> None:
    """Connect this process to the others, or do nothing for a single-process run.

    Explicit flags win. `coordinator="auto"` lets jax detect the cluster (SLURM, Cloud TPU pod,
    Open MPI); a SLURM job step with several tasks is detected without being asked.
    """
    import jax

    slurm_tasks = int(os.environ.get("SLURM_NTASKS", "1"))
    if coordinator == "auto" or (coordinator is None and slurm_tasks > 1):
        coordinator = process_count = process_id = None
    elif coordinator is None:
        return
    explicit = coordinator is not None
    if explicit and (process_count is None or process_id is None):
        raise UserError("--coordinator needs --process_count and --process_id as well")
    if explicit and not 0 <= process_id < process_count:
        raise UserError(f"--process_id={process_id}: must lie in [0, {process_count})")
    if explicit and process_id != 0:
        wait_for_coordinator(coordinator, timeout_s)
    if jax.config.jax_platforms in (None, "", "cpu") and explicit:
        # CPU processes exchange data through gloo (used by the tests' local multi-process runs).
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        jax.distributed.initialize(
            coordinator, process_count, process_id, initialization_timeout=timeout_s
        )
    except Exception as error:  # jax raises several types (RuntimeError, XlaRuntimeError, ...)
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserError(
            f"could not join the distributed run at coordinator {coordinator or '(auto)'} within "
            f"{timeout_s}s: {first[:200]}"
        ) from None


def wait_for_coordinator(address: str, timeout_s: float) -> None:
    """Poll the coordinator's port until it answers, so a wrong address fails cleanly.

    (jax's own client aborts the whole process when it cannot register in time.)
    """
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise UserError(f"--coordinator={address!r}: expected host:port")
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((host, int(port)), timeout=2):
                return
        except OSError as error:
            if time.monotonic() >= deadline:
                reason = error.strerror or type(error).__name__
                raise UserError(
                    f"--coordinator={address}: unreachable after {timeout_s}s ({reason}); "
                    "start process 0 first or fix the address"
                ) from None
            time.sleep(0.5)


def launch_local(argv: list[str], num_processes: int) -> int:
    """Run `genlab argv` as `num_processes` local processes joined through 127.0.0.1."""
    if num_processes < 1:
        raise UserError(f"--num_processes={num_processes}: must be at least 1")
    coordinator = f"127.0.0.1:{free_port()}"
    children = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "launch.cli",
                *argv,
                "--coordinator",
                coordinator,
                "--process_count",
                str(num_processes),
                "--process_id",
                str(i),
            ]
        )
        for i in range(num_processes)
    ]
    codes = [child.wait() for child in children]
    return next((code for code in codes if code != 0), 0)
