"""Optax optimizer and learning-rate schedule built from `config.optim`."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

from train.dtypes import DTYPES
from train.errors import UserError
from train.transfer import compile_pattern, path_of

SCHEDULES = ("warmup_cosine", "stages", "constant", "inverse_sqrt")


def inverse_sqrt_schedule(peak: float, warmup_steps: int) -> optax.Schedule:
    """Vaswani et al. (2017), eq. 3, scaled to peak at `peak`: peak * min(s / w, sqrt(w / s))
    with s = step + 1 (the paper counts steps from 1). The paper's d^-0.5 * w^-0.5 is the peak:
    7.0e-4 for d = 512, w = 4000."""
    warmup = max(warmup_steps, 1)

    def schedule(count: jax.Array) -> jax.Array:
        step = jnp.asarray(count, jnp.float32) + 1.0
        return peak * jnp.minimum(step / warmup, jnp.sqrt(warmup / step))

    return schedule


def learning_rate_schedule(c: ml_collections.ConfigDict) -> optax.Schedule:
    """`warmup_cosine` (default): linear warm-up from 0 to `lr`, then cosine decay to `min_lr` at
    step `decay_steps`. `stages`: `stage_lrs[i]` for `stage_steps[i]` steps each (the IWAE
    paper's schedule). `constant`: `lr` throughout. `inverse_sqrt`: linear warm-up to `lr` over
    `warmup_steps`, then decay as 1/sqrt(step) (the Transformer paper's)."""
    kind = c.get("schedule", "warmup_cosine")
    if kind == "constant":
        return optax.constant_schedule(c.lr)
    if kind == "inverse_sqrt":
        return inverse_sqrt_schedule(c.lr, c.warmup_steps)
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


def decay_mask(no_decay: str = "") -> Callable[[optax.Params], optax.Params]:
    """Weight-decay mask: decay weight matrices and embeddings, never biases or norm scales, nor
    the parameters whose '/'-joined name (`block_0/ssm/a_log`) the regex `no_decay` matches."""
    regex = compile_pattern(no_decay, "optim.no_decay") if no_decay else None

    def mask(params: optax.Params) -> optax.Params:
        def decayed(key_path: Any, p: jax.Array) -> bool:
            return p.ndim >= 2 and not (regex and regex.search("/".join(path_of(key_path))))

        out = jax.tree_util.tree_map_with_path(decayed, params)
        if regex and not any(
            regex.search("/".join(path_of(k)))
            for k, _ in jax.tree_util.tree_leaves_with_path(params)
        ):
            raise UserError(f"optim.no_decay={no_decay!r} matches no parameter")
        return out

    return mask


def moment_dtype(name: str) -> Any:
    """`optim.mu_dtype`: "" keeps the parameters' dtype; else float32 or bfloat16."""
    if not name:
        return None
    if name not in DTYPES:
        raise UserError(f"optim.mu_dtype={name!r} is unknown; allowed: '', {', '.join(DTYPES)}")
    return DTYPES[name]


def make_optimizer(c: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """AdamW with global-norm clipping; decoupled weight decay on matrices only, less those
    `optim.no_decay` names."""
    mask = decay_mask(c.get("no_decay", ""))
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
            mask=mask,
            mu_dtype=moment_dtype(c.get("mu_dtype", "")),
        )
    )
    return optax.chain(*parts)
