"""The evaluators each family's experiments run (`config.evals`; train/evaluators/ has them).

`every`: 0 runs an evaluator at each `train.eval_every` (and at the end), N > 0 every N steps,
-1 only when asked for with `genlab eval --metric NAME`.
"""

from __future__ import annotations

import ml_collections


def text_evals() -> ml_collections.ConfigDict:
    """Held-out loss (perplexity, bits per character) and a sample at every eval."""
    return ml_collections.ConfigDict({"heldout": {"every": 0}, "samples": {"every": 0}})


def translation_evals() -> ml_collections.ConfigDict:
    """Held-out loss, a few translated samples and BLEU of the eval split at every eval."""
    evals = text_evals()
    evals.bleu = {"every": 0, "examples": -1, "tokenize": "13a"}  # -1: every sentence
    return evals


def image_evals() -> ml_collections.ConfigDict:
    """Held-out metrics and picture grids at every eval. FID/KID is slow on CPU, so it runs on
    `genlab eval --metric fid` only; `--config.evals.fid.every=0` scores it at every eval too
    (with `evals.fid.num_samples` of at least 2049)."""
    evals = text_evals()
    evals.fid = {"every": -1, "num_samples": 10_000, "split": "test", "weights": "", "cache": ""}
    return evals
