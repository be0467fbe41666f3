"""Orbax checkpoints of the train state: async saves, keep newest N plus the best, resume.

Orbax writes each step into a temporary folder and renames it when complete, so a process killed
at any moment leaves either a whole checkpoint or none. Restoring with a target of
`jax.ShapeDtypeStruct`s carrying shardings places the state onto any mesh.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging as absl_logging
from jax.experimental import multihost_utils
from orbax.checkpoint import checkpoint_managers as policies

from train.errors import UserError

CHECKPOINT_DIR = "checkpoints"
CORRUPT_DIR = "corrupt_checkpoints"


def _short(error: BaseException) -> str:
    """The first line of an error, shortened: enough to say what broke."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return f"{type(error).__name__}: {text[:160]}"


class Checkpoints:
    """The checkpoints of one workdir."""

    def __init__(
        self,
        workdir: Path,
        keep: int = 2,
        best_metric: str | None = None,
        best_mode: str = "min",
        async_save: bool = True,
        read_only: bool = False,
    ):
        preserve: list[Any] = [policies.LatestN(max(keep, 1))]
        if best_metric:
            preserve.append(
                policies.BestN(
                    get_metric_fn=lambda metrics: metrics[best_metric],
                    reverse=best_mode == "min",
                    n=1,
                    keep_checkpoints_without_metrics=False,
                )
            )
        options = ocp.CheckpointManagerOptions(
            preservation_policy=policies.AnyPreservationPolicy(preserve),
            enable_async_checkpointing=async_save,
            cleanup_tmp_directories=not read_only,
            read_only=read_only,
            create=not read_only,
        )
        self.best_metric = best_metric
        self.read_only = read_only
        verbosity = absl_logging.get_verbosity()
        if read_only:  # Orbax warns that a read-only manager is read-only, at every eval/sample
            absl_logging.set_verbosity(absl_logging.ERROR)
        try:
            self.manager = ocp.CheckpointManager(
                Path(workdir).absolute() / CHECKPOINT_DIR, options=options, item_names=("state",)
            )
        finally:
            absl_logging.set_verbosity(verbosity)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def save(self, step: int, state: Any, metrics: dict[str, float] | None = None) -> None:
        """Start saving `state` as `step` (returns once the arrays are copied off the devices)."""
        if self.best_metric and metrics is not None and self.best_metric in metrics:
            metrics = {self.best_metric: float(metrics[self.best_metric])}
        else:
            metrics = None
        self.manager.save(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardSave(state)),
            metrics=metrics,
            force=True,
        )

    def restore(self, abstract_state: Any, step: int | None = None) -> tuple[Any, int]:
        """(state, step): `step` laid out as the shardings in `abstract_state`, or without a
        step the newest checkpoint that reads back whole. An unreadable newer one is reported in
        one line and skipped; a training run (not read-only) moves it aside into
        `corrupt_checkpoints/`, so that no later save collides with it. Nothing is deleted."""
        candidates = [step] if step is not None else sorted(self.all_steps(), reverse=True)
        for index, candidate in enumerate(candidates):
            try:
                restored = self.manager.restore(
                    candidate,
                    args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state)),
                )
            except ValueError as error:
                if "do not match" in str(error):
                    raise UserError(
                        f"checkpoint step {candidate} in {self.manager.directory} does not fit "
                        "this config's model/optimizer state; resume with the config it was "
                        "saved with, or a new workdir"
                    ) from None
                reason = _short(error)
            except Exception as error:  # a truncated, emptied or missing file
                reason = _short(error)
            else:
                return restored["state"], candidate
            if step is not None or index == len(candidates) - 1:
                raise UserError(
                    f"checkpoint step {candidate} in {self.manager.directory} is unreadable "
                    f"({reason})"
                    + ("" if step is not None else "; no older checkpoint to fall back on")
                )
            moved = self._set_aside(candidate)
            print(
                f"genlab: warning: checkpoint step {candidate} is unreadable ({reason}); using "
                f"step {candidates[index + 1]} instead" + (f"; moved to {moved}" if moved else ""),
                file=sys.stderr,
            )
        raise UserError(f"{self.manager.directory}: no checkpoints to restore")

    def _set_aside(self, step: int) -> Path | None:
        """Move an unreadable checkpoint out of the manager's folder (training runs only)."""
        if self.read_only:
            return None
        source = Path(self.manager.directory) / str(step)
        target = Path(self.manager.directory).parent / CORRUPT_DIR / str(step)
        if jax.process_index() == 0:
            target.parent.mkdir(exist_ok=True)
            source.rename(target)
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices(f"genlab: checkpoint {step} set aside")
        self.manager.reload()
        return target

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()


def abstract_with_shardings(abstract_state: Any, shardings: Any) -> Any:
    """Attach shardings to a tree of ShapeDtypeStructs, as a restore target."""
    return jax.tree.map(
        lambda shape, sharding: jax.ShapeDtypeStruct(shape.shape, shape.dtype, sharding=sharding),
        abstract_state,
        shardings,
    )
