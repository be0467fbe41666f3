"""Language-model metrics from the mean next-token loss (nats per token)."""

from __future__ import annotations

import math


def language_model_metrics(
    mean_loss_nats: float, tokens_per_char: float | None = 1.0
) -> dict[str, float]:
    """eval/loss (nats/token), eval/ppl = e^loss (per token) and eval/bpc, bits per character:
    loss / ln 2 scaled by the evaluated text's tokens per character, so that it compares across
    tokenizers (1 for a char tokenizer; None leaves bpc out)."""
    metrics = {
        "eval/loss": mean_loss_nats,
        "eval/ppl": math.exp(min(mean_loss_nats, 700.0)),
    }
    if tokens_per_char is not None:
        metrics["eval/bpc"] = mean_loss_nats / math.log(2.0) * tokens_per_char
    return metrics
