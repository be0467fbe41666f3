"""Optax optimizer and learning-rate schedule built from `config.optim`."""

from __future__ import annotations

import itertools

import jax
import ml_collections
import optax

from train.errors import UserError

SCHEDULES = ("warmup_cosine", "stages", "constant")


def learning_rate_schedule(c: ml_collections.ConfigDict) -> optax.Schedule:
    """`warmup_cosine` (default): linear warm-up from 0 to `lr`, then cosine decay to `min_lr` at
    step `decay_steps`. `stages`: `stage_lrs[i]` for `stage_steps[i]` steps each (the IWAE
    paper's schedule). `constant`: `lr` throughout."""
    kind = c.get("schedule", "warmup_cosine")
    if kind == "constant":
        return optax.constant_schedule(c.lr)
    if kind == "stages":
        lrs, lengths = list(c.stage_lrs), list(c.stage_steps)
        if not lrs or len(lrs) != len(lengths):
            raise UserError(
                f"optim.stage_lrs={lrs} and optim.stage_steps={lengths} need the "
                "same, non-zero length"
            )
        boundaries = [int(b) for b in itertools.accumulate(lengths)][:-1]
        return optax.join_schedules([optax.constant_schedule(lr) for lr in lrs], boundaries)
    if kind != "warmup_cosine":
        raise UserError(f"optim.schedule={kind!r} is unknown; allowed: {', '.join(SCHEDULES)}")
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
