"""What every evaluator shares: its settings and cadence, the capabilities it needs, its result."""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from train.capabilities import require
from train.errors import UserError
from train.partitioning import Placement


@dataclass
class Evaluation:
    """`metrics` are logged (floats, `eval/...`); `record` is what `genlab eval` prints (the
    metrics and what they depend on); `text` is logged as text (samples)."""

    metrics: dict[str, float]
    record: dict[str, Any] = field(default_factory=dict)
    text: str | None = None


@dataclass
class EvalContext:
    """Where an evaluation runs: the checkpoint's step, the workdir (None: write nothing), the
    state's placement and compiled eval step, and where per-example scores go when asked for."""

    step: int
    workdir: Path | None
    placement: Placement
    eval_step: Callable[..., Any]
    is_lead: bool = True
    per_example: dict[str, Any] | None = None


class Evaluator(abc.ABC):
    """One evaluation, built from `config.evals.NAME`.

    `every`: 0 runs it at every `train.eval_every` (and at the end), N > 0 every N steps, -1 only
    when asked for by `genlab eval --metric NAME`.
    """

    #: the capabilities (train/capabilities.py) a task must declare for this evaluator
    requires: ClassVar[tuple[type, ...]] = ()
    #: its settings besides `every`, with their defaults
    defaults: ClassVar[dict[str, Any]] = {}

    def __init__(self, name: str, settings: Mapping[str, Any]) -> None:
        self.name = name
        unknown = sorted(set(settings) - set(self.defaults) - {"every"})
        if unknown:
            allowed = ", ".join(["every", *self.defaults])
            raise UserError(f"evals.{name}.{unknown[0]} is unknown; allowed: {allowed}")
        self.every = int(settings.get("every", 0))
        if self.every < -1:
            raise UserError(f"evals.{name}.every={self.every}: allowed -1 (never), 0, or > 0")
        self.settings = {**self.defaults, **{k: v for k, v in settings.items() if k != "every"}}

    def check(self, task: Any) -> None:
        """A one-line error now, before training, when the task lacks a needed capability."""
        for capability in self.requires:
            require(task, capability, f"evals.{self.name}")

    def due(self, step: int, eval_every: int, final: bool) -> bool:
        if self.every < 0:
            return False
        return step % (self.every or eval_every) == 0 or final

    @abc.abstractmethod
    def run(self, task: Any, state: Any, context: EvalContext) -> Evaluation:
        """Evaluate `state`; called on every process (sharded state needs all of them)."""
