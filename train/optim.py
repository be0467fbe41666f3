"""Optax optimizer and learning-rate schedule built from `config.optim`."""

from __future__ import annotations

import jax
import ml_collections
import optax


def learning_rate_schedule(c: ml_collections.ConfigDict) -> optax.Schedule:
    """Linear warm-up from 0 to `lr`, then cosine decay to `min_lr` at step `decay_steps`."""
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=c.lr,
        warmup_steps=c.warmup_steps,
        decay_steps=max(c.decay_steps, c.warmup_steps + 1),
        end_value=c.min_lr,
    )


def matrices_only(params: optax.Params) -> optax.Params:
    """Weight-decay mask: decay weight matrices and embeddings, never biases or norm scales."""
    return jax.tree.map(lambda p: p.ndim >= 2, params)


def make_optimizer(c: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """AdamW with global-norm clipping; decoupled weight decay on matrices only."""
    parts = []
    if c.clip_norm > 0:
        parts.append(optax.clip_by_global_norm(c.clip_norm))
    parts.append(
        optax.adamw(
            learning_rate=learning_rate_schedule(c),
            b1=c.b1,
            b2=c.b2,
            eps=c.eps,
            weight_decay=c.weight_decay,
            mask=matrices_only,
        )
    )
    return optax.chain(*parts)
