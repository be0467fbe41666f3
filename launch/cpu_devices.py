"""Split a CPU into one XLA device per core before JAX starts.

XLA's CPU client runs one device's small operations largely one after another, leaving the other
cores idle; with one device per core the data-parallel mesh keeps every core busy (nanoGPT's CPU
recipe on 2 cores: 47.5 -> 31.5 ms/step, see benchmarks/README.md). The math is the same up to
float rounding (tested: data-parallel losses match one device to 1e-5).
"""

from __future__ import annotations

import os
import sys

import ml_collections

FLAG = "--xla_force_host_platform_device_count"


def cpu_device_count(config: ml_collections.ConfigDict, cores: int) -> int:
    """The most devices, up to `requested` (-1: the core count), that divide the batch evenly."""
    requested = config.mesh.get("cpu_devices", 1)
    limit = cores if requested == -1 else max(requested, 1)
    per_step = config.train.batch_size // max(config.train.get("grad_accum", 1), 1)
    return max(n for n in range(1, limit + 1) if per_step % n == 0)


def split_cpu(config: ml_collections.ConfigDict) -> None:
    """Give XLA's CPU client one device per core (as `mesh.cpu_devices` says) before it starts.

    JAX reads `jax_num_cpu_devices` when its first backend starts, not when it is imported, so
    this works whatever was imported before. Left alone: a device count already in XLA_FLAGS (the
    user's, or the tests') and runs on another platform. If a backend has started already, the
    split cannot happen any more and a note says so on stderr.
    """
    if FLAG in os.environ.get("XLA_FLAGS", ""):
        return
    if os.environ.get("JAX_PLATFORMS", "cpu") not in ("", "cpu"):
        return
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    count = cpu_device_count(config, cores or 1)
    import jax
    from jax._src import xla_bridge

    if xla_bridge.backends_are_initialized():
        have = jax.local_device_count()
        if jax.default_backend() == "cpu" and have != count:
            print(
                f"genlab: note: XLA started before the CPU could be split; running on {have} "
                f"CPU device(s) instead of {count}",
                file=sys.stderr,
            )
        return
    jax.config.update("jax_num_cpu_devices", count)


def plan_devices(topology: str) -> None:
    """Before JAX starts, for `genlab plan`, which compiles on this host's CPU and runs
    nothing: JAX must not claim a GPU or look for a TPU of its own, and `cpu:N` needs N XLA CPU
    devices (a device count already in XLA_FLAGS is left alone)."""
    import jax
    from jax._src import xla_bridge

    # libtpu locks /tmp/libtpu_lockfile for the process that drives a host's TPU; a plan drives
    # none, so concurrent plans (and test runs) need not wait for each other. Off a TPU VM it
    # also asks the metadata server what it runs on and warns on stderr; say it instead.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    if not topology.startswith("cpu:"):
        os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
        os.environ.setdefault("TPU_ACCELERATOR_TYPE", topology)
        os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
    if xla_bridge.backends_are_initialized():
        return
    if not jax.config.jax_platforms:
        jax.config.update("jax_platforms", "cpu")
    count = topology.removeprefix("cpu:")
    if (
        topology.startswith("cpu:")
        and count.isdigit()
        and FLAG not in os.environ.get("XLA_FLAGS", "")
    ):
        jax.config.update("jax_num_cpu_devices", max(int(count), 1))
