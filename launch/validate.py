"""Every config key with a range or a fixed set of values, checked in one place before any work.

Rules are matched against the dotted key by shell-style patterns (`optim*.lr` covers the GAN's
`optim_g` and `optim_d` too); a key a config lacks is simply not checked. Choices that a family
alone knows (a model's `arch`, a loss's `name`) stay with that family, which reports them as one
line when it builds. RELATIONS check keys against each other, once each key is allowed alone.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import ml_collections

from models.layers import ATTENTION_IMPLS, MLP_KINDS, NORMS, REMAT_POLICIES
from train.dtypes import DTYPES
from train.errors import UserError
from train.metadata import flat_settings


@dataclass(frozen=True)
class Range:
    """A number between `low` and `high`; `open_low`/`open_high` exclude the ends."""

    low: float = -math.inf
    high: float = math.inf
    open_low: bool = False
    open_high: bool = False

    def allows(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
            return False
        above = value > self.low if self.open_low else value >= self.low
        below = value < self.high if self.open_high else value <= self.high
        return above and below

    def describe(self) -> str:
        if self.high == math.inf:
            return f"{'>' if self.open_low else '>='} {self.low:g}"
        left, right = "(" if self.open_low else "[", ")" if self.open_high else "]"
        return f"in {left}{self.low:g}, {self.high:g}{right}"


@dataclass(frozen=True)
class Choice:
    values: tuple[Any, ...]

    def allows(self, value: Any) -> bool:
        return value in self.values

    def describe(self) -> str:
        return "one of " + ", ".join(repr(v) for v in self.values)


POSITIVE = Range(1)
NON_NEGATIVE = Range(0)
FRACTION = Range(0, 1, open_high=True)  # a probability that must leave something

RULES: dict[str, Range | Choice] = {
    "train.steps": POSITIVE,
    "train.batch_size": POSITIVE,
    "train.grad_accum": POSITIVE,
    "train.log_every": POSITIVE,
    "train.eval_every": POSITIVE,
    "train.checkpoint_every": POSITIVE,
    "train.keep_checkpoints": POSITIVE,
    "train.eval_batches": POSITIVE,
    "train.best_mode": Choice(("min", "max")),
    "optim*.lr": Range(0, open_low=True),
    "optim*.min_lr": NON_NEGATIVE,
    "optim*.warmup_steps": NON_NEGATIVE,
    "optim*.decay_steps": NON_NEGATIVE,
    "optim*.b1": FRACTION,
    "optim*.b2": FRACTION,
    "optim*.eps": NON_NEGATIVE,
    "optim*.weight_decay": NON_NEGATIVE,
    "optim*.clip_norm": NON_NEGATIVE,
    "optim*.mu_dtype": Choice(("", *DTYPES)),
    "model.num_layers": POSITIVE,
    "model.num_encoder_layers": POSITIVE,
    "model.num_decoder_layers": POSITIVE,
    "model.num_heads": POSITIVE,
    "model.num_kv_heads": NON_NEGATIVE,  # 0: num_heads
    "model.emb_dim": POSITIVE,
    "model.mlp_dim": POSITIVE,
    "model.width": POSITIVE,
    "model.depth": POSITIVE,
    "model.channels": POSITIVE,
    "model.latent_dim": POSITIVE,
    "model.patch_size": POSITIVE,
    "model.num_res_blocks": NON_NEGATIVE,
    "model.*dropout": FRACTION,
    "model.dtype": Choice(tuple(DTYPES)),
    "model.param_dtype": Choice(tuple(DTYPES)),
    "model.attention_impl": Choice(ATTENTION_IMPLS),
    "model.remat": Choice(tuple(REMAT_POLICIES)),
    "model.norm": Choice(NORMS),
    "model.mlp": Choice(MLP_KINDS),
    "model.rope_theta": Range(1, open_low=True),  # frequencies fall across head dimensions
    "data.block_size": POSITIVE,
    "data.vocab_size": NON_NEGATIVE,
    "data.val_fraction": Range(0, 1, open_low=True, open_high=True),
    "data.source": Choice(("text", "synthetic", "shards")),
    "data.prepare.sample_by": Choice(("document", "paragraph", "line")),
    "data.prepare.num_proc": NON_NEGATIVE,  # 0: one process per core
    "data.prepare.shard_tokens": POSITIVE,
    "data.prepare.fit_documents": NON_NEGATIVE,  # 0: every training document
    "evals.*.every": Range(-1),  # -1: only on `genlab eval --metric NAME`
    "evals.fid.num_samples": POSITIVE,
    "evals.bleu.examples": Range(-1),  # -1: all
    "sample.num_tokens": POSITIVE,
    "sample.temperature": NON_NEGATIVE,
    "sample.top_k": NON_NEGATIVE,
    "sample.top_p": Range(0, 1, open_low=True),
    "mesh.cpu_devices": Choice((-1,)),  # or a positive count; see _allowed
}


def _allowed(key: str, value: Any, rule: Range | Choice) -> bool:
    if key == "mesh.cpu_devices":  # -1 (one per core) or a positive count
        return rule.allows(value) or POSITIVE.allows(value)
    return rule.allows(value)


def rule_for(key: str) -> Range | Choice | None:
    """The rule a dotted key falls under, if any (the first pattern that matches)."""
    return next((rule for pattern, rule in RULES.items() if fnmatch.fnmatch(key, pattern)), None)


def _kv_heads_divide_heads(settings: dict[str, Any]) -> str | None:
    kv_heads, heads = settings["model.num_kv_heads"], settings["model.num_heads"]
    if kv_heads and heads % kv_heads:
        return (
            f"model.num_kv_heads={kv_heads} must divide model.num_heads={heads} "
            "(each key/value head serves a whole group of query heads; 0: num_heads)"
        )
    return None


# Checks between keys: the keys they read, and a function of the flat settings that returns the
# problem in one line, or None. They run only where a config has every key they read.
RELATIONS: tuple[tuple[tuple[str, ...], Callable[[dict[str, Any]], str | None]], ...] = (
    (("model.num_kv_heads", "model.num_heads"), _kv_heads_divide_heads),
)


def check_config(config: ml_collections.ConfigDict) -> None:
    """Raise a one-line UserError for the first key whose value its rule does not allow, then
    for the first relation between keys (RELATIONS) that does not hold."""
    settings = flat_settings(config.to_dict())
    for key, value in settings.items():
        rule = rule_for(key)
        if rule is not None and not _allowed(key, value, rule):
            allowed = rule.describe()
            if key == "mesh.cpu_devices":
                allowed = "-1 (one per core) or a positive count"
            raise UserError(f"{key}={value!r} is not allowed; allowed: {allowed}")
    for keys, relation in RELATIONS:
        problem = relation(settings) if all(key in settings for key in keys) else None
        if problem:
            raise UserError(problem)
