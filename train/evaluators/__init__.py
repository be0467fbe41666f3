"""Evaluators named by `config.evals`, each with its settings and cadence (see `base.py`).

One module per evaluator, found by name as tasks are: `heldout` (the family's eval batches),
`samples`, `fid` (FID and KID), `bleu`. The trainer and `genlab eval` both build them here, and
each one sees a task only through the capabilities it requires.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Mapping
from typing import Any

import ml_collections

from train.errors import UserError
from train.evaluators.base import EvalContext, Evaluation, Evaluator

__all__ = ["EvalContext", "Evaluation", "Evaluator", "available", "build", "configured"]


def available() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if m.name != "base")


def evaluator_class(name: str) -> type[Evaluator]:
    if name not in available():
        raise UserError(f"evaluator {name!r} is unknown; allowed: {', '.join(available())}")
    return importlib.import_module(f"train.evaluators.{name}").Evaluator


def configured(config: ml_collections.ConfigDict) -> dict[str, dict[str, Any]]:
    """`config.evals` as plain dicts. A run saved before `evals` existed gets the evaluators
    its old `eval.*` keys asked for (held-out loss and samples always; FID and BLEU when set)."""
    if "evals" in config:
        return {name: dict(settings) for name, settings in config.evals.items()}
    e = config.get("eval", ml_collections.ConfigDict())
    legacy: dict[str, dict[str, Any]] = {"heldout": {}, "samples": {}}
    if e.get("fid_samples", 0) > 0:
        legacy["fid"] = {"num_samples": e.fid_samples, "weights": e.get("fid_weights", "")}
    if e.get("bleu_examples", 0) != 0:
        legacy["bleu"] = {"examples": e.bleu_examples, "tokenize": e.get("bleu_tokenize", "13a")}
    return legacy


def build(
    config: ml_collections.ConfigDict,
    task: Any,
    names: list[str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> list[Evaluator]:
    """The evaluators `names` (default: every configured one), with their configured settings
    (an evaluator the config does not name gets its defaults) updated by `overrides`, each
    checked against the task's capabilities."""
    settings = configured(config)
    evaluators = []
    for name in names if names is not None else list(settings):
        evaluator = evaluator_class(name)(name, {**settings.get(name, {}), **(overrides or {})})
        evaluator.check(task)
        evaluators.append(evaluator)
    return evaluators
