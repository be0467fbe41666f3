"""The task's own held-out evaluation: its eval batches through its `eval_step`, summarised by
the family (LMs: loss, perplexity, bits per character; translation: loss, perplexity; VAEs: ELBO,
importance-weighted NLL, bits per dim; diffusion: loss and the bound in bits per dim; GANs: the
discriminator's loss and accuracy)."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from train import partitioning
from train.evaluators import base


def evaluate_batches(
    task: Any,
    state: Any,
    eval_step: Any,
    placement: partitioning.Placement,
    per_example: dict[str, np.ndarray] | None = None,
) -> dict[str, float]:
    """Sum the task's eval statistics over its eval batches and summarise them.

    Entries named `per_example/...` are concatenated across batches instead of summed (and
    copied into `per_example` when given, e.g. for anomaly scores).
    """
    totals: dict[str, Any] = {}
    for local in task.eval_batches():
        sums = jax.device_get(eval_step(state, partitioning.global_batch(local, placement.batch)))
        for key, value in sums.items():
            if key.startswith("per_example/"):
                totals.setdefault(key, []).append(np.asarray(value))
            else:
                totals[key] = totals.get(key, 0.0) + np.asarray(value, np.float64)
    for key, value in totals.items():
        if key.startswith("per_example/"):
            totals[key] = np.concatenate(value)
    if per_example is not None:  # without the padding rows (weight 0) of a last partial batch
        real = totals.get("per_example/weight")
        for key, value in totals.items():
            if key.startswith("per_example/") and key != "per_example/weight":
                per_example[key.removeprefix("per_example/")] = (
                    value if real is None else value[real > 0]
                )
    return task.summarize_eval(totals)


class Evaluator(base.Evaluator):
    def run(self, task: Any, state: Any, context: base.EvalContext) -> base.Evaluation:
        with context.placement.active():
            metrics = evaluate_batches(
                task, state, context.eval_step, context.placement, context.per_example
            )
        return base.Evaluation(metrics, dict(metrics))
