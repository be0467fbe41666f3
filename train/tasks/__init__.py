"""Tasks: one module or package per model family, each defining `Task`. Found by name, so adding
a family touches no other family's files."""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

import ml_collections

from train.data.splits import TRAINING, Splits
from train.errors import UserError
from train.tasks.base import Task


def available_tasks() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if m.name != "base")


def get_task_class(name: str) -> type[Task]:
    if name not in available_tasks():
        raise UserError(f"task={name!r} is unknown; allowed: {', '.join(available_tasks())}")
    return importlib.import_module(f"train.tasks.{name}").Task


def build_task(
    config: ml_collections.ConfigDict, workdir: Path | None = None, splits: Splits = TRAINING
) -> Task:
    """The configured task, handed the data of `splits` that its family's data module loads."""
    cls = get_task_class(config.task)
    return cls(config, cls.load_data(config, workdir, splits), workdir)
