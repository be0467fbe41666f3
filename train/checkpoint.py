"""Orbax checkpoints of the train state: async saves, keep newest N plus the best, resume.

Orbax writes each step into a temporary folder and renames it when complete, so a process killed
at any moment leaves either a whole checkpoint or none. Restoring with a target of
`jax.ShapeDtypeStruct`s carrying shardings places the state onto any mesh.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

from train.errors import UserError

CHECKPOINT_DIR = "checkpoints"


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
        self.manager = ocp.CheckpointManager(
            Path(workdir).absolute() / CHECKPOINT_DIR, options=options, item_names=("state",)
        )

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

    def restore(self, abstract_state: Any, step: int | None = None) -> Any:
        """Restore `step` (default: newest) laid out as the shardings in `abstract_state`."""
        step = self.latest_step() if step is None else step
        try:
            restored = self.manager.restore(
                step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state))
            )
        except ValueError as error:
            if "do not match" not in str(error):
                raise
            raise UserError(
                f"checkpoint step {step} in {self.manager.directory} does not fit this config's "
                "model/optimizer state; resume with the config it was saved with, or a new workdir"
            ) from None
        return restored["state"]

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
