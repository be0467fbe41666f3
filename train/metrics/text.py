"""Language-model metrics from the mean next-token loss (nats per token)."""

from __future__ import annotations

import math


def language_model_metrics(mean_loss_nats: float) -> dict[str, float]:
    """eval/loss (nats/token), eval/ppl = e^loss, eval/bpc = loss / ln 2 (bits per character for
    a character-level tokenizer)."""
    return {
        "eval/loss": mean_loss_nats,
        "eval/ppl": math.exp(min(mean_loss_nats, 700.0)),
        "eval/bpc": mean_loss_nats / math.log(2.0),
    }
