"""When a signal stops training: one process checks its own flag, several agree on a step.

A stop must land on the same step in every process, or one saves a checkpoint (a collective)
while another runs the next train step (another collective) and both wait forever. A single
process stops at the first step after the signal. Several processes let JAX's preemption sync
manager pick the step: the SIGTERM handler it installs at `jax.distributed.initialize` tells the
coordination service, which makes every process reach the same sync step. SIGINT (Ctrl-C on a
local multi-process run) is turned into that SIGTERM so it takes the same road.
"""

from __future__ import annotations

import os
import signal
from typing import Any

import jax
from jax.experimental import multihost_utils


def _agreed_by_jax() -> bool:
    """Several processes joined through the coordination service, with its preemption service."""
    return jax.process_count() > 1 and bool(jax.config.jax_enable_preemption_service)


class StopSignal:
    """Remembers SIGTERM/SIGINT instead of dying, so the loop can checkpoint first.

    `reached(step)` must be called after every train step, with the step just taken."""

    def __init__(self):
        self.signum: int | None = None
        self._agreed = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignal:
        self._agreed = _agreed_by_jax()
        # Under the sync manager, SIGTERM stays with JAX's own handler (installed in C++).
        ours = (signal.SIGINT,) if self._agreed else (signal.SIGTERM, signal.SIGINT)
        for signum in ours:
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self._agreed:
            os.kill(os.getpid(), signal.SIGTERM)
        else:
            self.signum = signum

    def reached(self, step: int) -> bool:
        """Whether to save and stop after `step` (the same answer in every process)."""
        if self._agreed and multihost_utils.reached_preemption_sync_point(step):
            self.signum = signal.SIGTERM
        return self.signum is not None

    def __exit__(self, *exc: Any) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
