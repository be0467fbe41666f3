"""Which data a task is handed: the caller (trainer, `genlab eval`, `genlab sample`) decides, the
family's data module loads exactly that, and asking a bundle for a split it lacks is one line."""

from __future__ import annotations

from typing import TypeVar

from train.errors import UserError

TRAIN = "train"
EVAL = "eval"
Splits = frozenset[str]
TRAINING: Splits = frozenset({TRAIN, EVAL})  # `genlab train`
EVALUATION: Splits = frozenset({EVAL})  # `genlab eval`
NONE: Splits = frozenset()  # `genlab sample`: the model alone

T = TypeVar("T")


def loaded(value: T | None, split: str, what: str) -> T:
    """`value`, which the caller asked to be loaded; None means it was not asked for."""
    if value is None:
        raise UserError(f"{what}: the {split} split was not loaded for this command")
    return value
