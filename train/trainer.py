"""The one training loop. It knows tasks only through `train/tasks/base.py`, never a family."""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import ml_collections
import numpy as np

from train import evaluators, partitioning
from train.checkpoint import Checkpoints, abstract_with_shardings
from train.data.splits import EVALUATION, Splits
from train.errors import UserError
from train.logging import MetricWriter, Progress
from train.metadata import CONFIG_FILE, save_config, write_metadata
from train.partitioning import Placement
from train.perf import peak_flops_per_device
from train.stopping import StopSignal
from train.tasks import build_task
from train.tasks.base import Task
from train.transfer import Transfer
from train.workdir import WorkdirLock, check_room, check_same_run, prepare_workdir


class Stopped(Exception):
    """Training stopped early by a signal after saving a checkpoint; `signum` says which."""

    def __init__(self, signum: int, step: int):
        super().__init__(f"stopped by signal {signum} at step {step}; checkpoint saved")
        self.signum = signum
        self.step = step


def place_state(
    task: Task,
    mesh: jax.sharding.Mesh,
    seed: int,
    checkpoints: Checkpoints | None,
    step: int | None = None,
) -> tuple[Any, Placement, int]:
    """Create the state already sharded, or restore a checkpoint (default newest) onto this mesh."""
    boxed, placement = abstract_state(task, mesh, seed)
    shardings = placement.state
    if checkpoints is not None and (step is not None or checkpoints.latest_step() is not None):
        target = abstract_with_shardings(nn.meta.unbox(boxed), shardings)
        state, restored = checkpoints.restore(target, step)
        return state, placement, restored
    # Traced without the logical rules: out_shardings alone place the state, and the rules would
    # constrain DenseGeneral's flat kernel before it is reshaped to its named shape.
    init = jax.jit(lambda r: nn.meta.unbox(task.init_state(r)), out_shardings=shardings)
    return init(jax.random.key(seed)), placement, 0


def abstract_state(task: Task, mesh: jax.sharding.Mesh, seed: int) -> tuple[Any, Placement]:
    """The state's shapes, nothing allocated (logical-axis boxes kept), and where the state
    and the batches live on `mesh`."""
    boxed = jax.eval_shape(task.init_state, jax.random.key(seed))
    shardings = partitioning.logical_shardings(boxed, mesh)
    return boxed, Placement(mesh, shardings, partitioning.batch_shardings(mesh, task.batch_axes))


def lower_train_step(
    task: Task, placement: Placement, transfer: Transfer, state: Any, batch: Any
) -> Any:
    """The train step lowered for these shardings, state donated: what `genlab train` runs
    and what `genlab plan` compiles for a machine it does not have (then `state` and `batch`
    are abstract: ShapeDtypeStructs carrying their shardings)."""
    with placement.active():
        step = jax.jit(
            transfer.wrap(task.train_step),
            in_shardings=(placement.state, placement.batch),
            out_shardings=(placement.state, partitioning.replicated(placement.mesh)),
            donate_argnums=0,
        )
        return step.lower(state, batch)


def jit_eval_step(task: Task, placement: Placement) -> Any:
    return jax.jit(
        task.eval_step,
        in_shardings=(placement.state, placement.batch),
        out_shardings=partitioning.replicated(placement.mesh),
    )


def restore_run(
    config: ml_collections.ConfigDict,
    workdir: Path,
    step: int | None = None,
    devices: list[jax.Device] | None = None,
    splits: Splits = EVALUATION,
) -> tuple[Task, Any, Placement, int]:
    """A workdir's task (with the data of `splits`) and its state restored from checkpoint
    `step` (default newest)."""
    task = build_task(config, workdir=workdir, splits=splits)
    state, placement, restored = restore_state(task, config, workdir, step, devices)
    return task, state, placement, restored


def restore_state(
    task: Task,
    config: ml_collections.ConfigDict,
    workdir: Path,
    step: int | None = None,
    devices: list[jax.Device] | None = None,
) -> tuple[Any, Placement, int]:
    """The state of checkpoint `step` (default newest) of a workdir, placed on this mesh."""
    checkpoints = Checkpoints(workdir, read_only=True)
    steps = checkpoints.all_steps()
    if not steps:
        raise UserError(f"--workdir {workdir}: no checkpoints to load")
    if step is not None and step not in steps:
        raise UserError(f"--step {step}: no such checkpoint; available: {sorted(steps)}")
    mesh = partitioning.make_mesh(config.mesh, devices)
    return place_state(task, mesh, config.seed, checkpoints, step)


def default_eval_names(config: ml_collections.ConfigDict) -> list[str]:
    """What `genlab eval` runs when no evaluator is named: every configured one that runs
    during training, except the samples (`genlab sample` draws those)."""
    return [
        name
        for name, settings in evaluators.configured(config).items()
        if settings.get("every", 0) >= 0 and name != "samples"
    ]


def evaluate_run(
    config: ml_collections.ConfigDict,
    workdir: Path,
    step: int | None = None,
    per_example: dict[str, np.ndarray] | None = None,
    names: list[str] | None = None,
    overrides: dict[str, Any] | None = None,
) -> tuple[int, dict[str, Any]]:
    """Run evaluators `names` (default `default_eval_names`) on a workdir's checkpoint; return
    its step and their records (metrics and what they depend on)."""
    names = default_eval_names(config) if names is None else names
    task = build_task(config, workdir=workdir, splits=EVALUATION)
    chosen = evaluators.build(config, task, names, overrides)  # checked before the restore
    state, placement, step = restore_state(task, config, workdir, step)
    context = evaluators.EvalContext(
        step, workdir, placement, jit_eval_step(task, placement), is_lead(), per_example
    )
    record: dict[str, Any] = {}
    for evaluator in chosen:
        record.update(evaluator.run(task, state, context).record)
    return step, record


def is_lead() -> bool:
    return jax.process_index() == 0


class Trainer:
    """Runs `config.train.steps` steps of a task in `workdir`, resuming from its checkpoints."""

    def __init__(
        self,
        config: ml_collections.ConfigDict,
        workdir: Path,
        devices: list[jax.Device] | None = None,
    ):
        self.config = config
        self.workdir = prepare_workdir(Path(workdir))
        self.is_lead = jax.process_index() == 0
        # Process 0 holds the workdir for the whole run (other processes of the run share it).
        self.lock = WorkdirLock(self.workdir).acquire() if self.is_lead else None
        try:
            self._set_up(devices)
        except BaseException:
            self.close()
            raise

    def _set_up(self, devices: list[jax.Device] | None) -> None:
        """Everything checked before anything of the workdir changes."""
        config = self.config
        check_same_run(config, self.workdir)
        self.task = build_task(config, workdir=self.workdir)
        self.evaluators = evaluators.build(config, self.task)
        self.mesh = partitioning.make_mesh(config.mesh, devices)
        partitioning.check_batch_divides(
            config.train.batch_size, self.mesh, config.train.grad_accum
        )
        self.transfer = Transfer(config)  # init_from / freeze, checked before any work
        t = config.train
        self.checkpoints = Checkpoints(
            self.workdir,
            keep=t.keep_checkpoints,
            best_metric=t.best_metric,
            best_mode=t.best_mode,
            async_save=t.async_checkpoints,
        )

    def close(self) -> None:
        """Let go of the workdir (after `run`, or when set-up failed)."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def run(self) -> dict[str, float]:
        """Train to the configured number of steps; return the last logged metrics."""
        t = self.config.train
        try:
            state, placement, start = place_state(
                self.task, self.mesh, self.config.seed, self.checkpoints
            )
            # A resumed run continues from its own checkpoint: init_from only seeds a fresh one.
            state, transfer_lines = self.transfer.prepare(state, placement.state, fresh=start == 0)
        except BaseException:
            self.close()
            raise
        if self.is_lead:  # the run starts: only now does its record change
            save_config(self.config, self.workdir / CONFIG_FILE)
            write_metadata(self.workdir, sys.argv, self.task.derived_settings())
            self.task.save_assets(self.workdir)
        writer = MetricWriter(self.workdir, enabled=self.is_lead, resumed_at=start)
        progress = Progress(
            t.steps, start, enabled=self.is_lead and t.progress_bar, lead=self.is_lead
        )
        for line in transfer_lines:
            progress.print(line)
        if start:
            progress.print(f"resumed from the checkpoint of step {start}")
        try:
            with StopSignal() as stop:
                return self._loop(state, placement, start, writer, progress, stop)
        finally:
            self.checkpoints.wait()
            progress.close()
            writer.close()
            self.close()

    def compile_steps(self, state: Any, placement: Placement) -> tuple[Any, Any, float]:
        """(train step compiled ahead of time with donated state, jitted eval step, seconds)."""
        example = partitioning.global_batch(self.task.train_batch(0), placement.batch)
        started = time.perf_counter()
        train_step = lower_train_step(self.task, placement, self.transfer, state, example)
        with placement.active():
            train_step = train_step.compile()
            eval_step = jit_eval_step(self.task, placement)
        return train_step, eval_step, time.perf_counter() - started

    def _loop(
        self,
        state: Any,
        placement: Placement,
        start: int,
        writer: MetricWriter,
        progress: Progress,
        stop: StopSignal,
    ) -> dict[str, float]:
        t = self.config.train
        task = self.task
        train_step, eval_step, compile_s = self.compile_steps(state, placement)
        unit, units_per_step = task.examples_per_step()
        flops = task.flops_per_step(state)
        state_bytes = sum(x.nbytes for x in jax.tree.leaves(state))
        peak = peak_flops_per_device()
        pending: list[dict[str, Any]] = []
        last: dict[str, float] = {"perf/compile_time_s": compile_s}
        writer.write(start, last)
        tick, timed_steps, step = time.perf_counter(), 0, start
        first_step_done = False

        def flush() -> dict[str, float]:
            """Fetch pending metrics; stop on a non-finite loss before anything is saved."""
            nonlocal tick, timed_steps
            fetched = jax.device_get(pending)
            pending.clear()
            for offset, metrics in enumerate(fetched):
                loss = float(metrics["train/loss"])
                if not math.isfinite(loss):
                    bad = step - len(fetched) + offset + 1
                    good = self.checkpoints.latest_step()
                    raise UserError(
                        f"non-finite train/loss={loss} at step {bad}; training stopped "
                        f"(allowed: finite losses); last good checkpoint: step {good}"
                    )
            summary = {k: float(np.mean([m[k] for m in fetched])) for k in fetched[0]}
            now = time.perf_counter()
            if timed_steps:
                step_time = (now - tick) / timed_steps
                summary["perf/step_time_s"] = step_time
                summary[f"perf/{unit}_per_s"] = units_per_step / step_time
                if flops and peak:
                    summary["perf/mfu"] = flops / step_time / (peak * jax.device_count())
            tick, timed_steps = now, 0
            return summary

        # Several XLA CPU devices in one process can deadlock in their collectives when many
        # short steps are queued at once (seen with 4 ms VAE steps on 2 devices): run them one
        # at a time there. It costs nothing measurable, as host and devices share the cores.
        one_at_a_time = jax.default_backend() == "cpu" and jax.local_device_count() > 1
        while step < t.steps:
            batch = partitioning.global_batch(task.train_batch(step), placement.batch)
            state, metrics = train_step(state, batch)
            if one_at_a_time:
                jax.block_until_ready(metrics)
            pending.append(metrics)
            step += 1
            if first_step_done:
                timed_steps += 1
            else:  # the first step's time holds start-up costs: leave it out of the averages
                jax.block_until_ready(metrics)
                first_step_done, tick = True, time.perf_counter()

            # Read the flag once: a signal landing later in this iteration must not end the run
            # without the checkpoint this iteration would then skip; the next iteration saves.
            stopping = stop.reached(step)
            final = step == t.steps or stopping
            due = [e for e in self.evaluators if e.due(step, t.eval_every, final and not stopping)]
            evaluating = bool(due)
            saving = step % t.checkpoint_every == 0 or final
            if step % t.log_every == 0 or final or evaluating or saving:
                summary = flush()
                context = evaluators.EvalContext(
                    step, self.workdir, placement, eval_step, self.is_lead
                )
                for evaluator in due:  # every process: sharded state needs all of them
                    result = evaluator.run(task, state, context)
                    summary.update(result.metrics)
                    if result.text is not None:
                        writer.write_text(step, evaluator.name, result.text)
                writer.write(step, summary)
                progress.update(step - progress.bar.n, summary)
                if evaluating:
                    progress.print(_describe(step, summary))
                last.update(summary)
            if saving:
                check_room(self.workdir, state_bytes, f"checkpoint step {step}")
                self.checkpoints.save(step, state, metrics=last if evaluating else None)
            if evaluating or saving:  # keep eval and checkpoint time out of the step time
                tick = time.perf_counter()
            if stopping:
                self.checkpoints.wait()
                raise Stopped(stop.signum, step)
        return last


def _describe(step: int, metrics: dict[str, float]) -> str:
    shown = {k: v for k, v in metrics.items() if k.startswith(("eval/", "train/loss"))}
    return f"step {step}: " + ", ".join(f"{k}={v:.4f}" for k, v in sorted(shown.items()))


def train(
    config: ml_collections.ConfigDict, workdir: Path, devices: list[jax.Device] | None = None
) -> dict[str, float]:
    return Trainer(config, workdir, devices).run()
