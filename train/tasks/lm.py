"""Decoder-only language modelling: next-token cross-entropy, perplexity/bpc, KV-cache sampling."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.experimental import multihost_utils

from models.transformer import POS_ENCODINGS, DecoderLM
from train.data import tokenizers
from train.data.text import TokenWindows, load_text, split_tokens
from train.decoding import sample_tokens
from train.errors import UserError
from train.metrics.text import language_model_metrics
from train.optim import make_optimizer
from train.perf import transformer_flops_per_token
from train.state import TrainState, gradient_step
from train.tasks import base

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
EVAL_SEED_OFFSET = 10_007  # eval windows come from a different stream than training batches


def build_model(model_config: ml_collections.ConfigDict, max_len: int) -> DecoderLM:
    c = model_config
    for field in ("dtype", "param_dtype"):
        if c[field] not in DTYPES:
            raise UserError(f"model.{field}={c[field]!r} is unknown; allowed: {', '.join(DTYPES)}")
    if c.pos_encoding not in POS_ENCODINGS:
        raise UserError(
            f"model.pos_encoding={c.pos_encoding!r} is unknown; allowed: {', '.join(POS_ENCODINGS)}"
        )
    if c.emb_dim % c.num_heads:
        raise UserError(
            f"model.emb_dim={c.emb_dim} must be divisible by model.num_heads={c.num_heads}"
        )
    return DecoderLM(
        vocab_size=c.vocab_size,
        num_layers=c.num_layers,
        num_heads=c.num_heads,
        emb_dim=c.emb_dim,
        mlp_dim=c.mlp_dim,
        max_len=max_len,
        dropout=c.dropout,
        pos_encoding=c.pos_encoding,
        tie_embeddings=c.tie_embeddings,
        use_bias=c.use_bias,
        activation=c.activation,
        dtype=DTYPES[c.dtype],
        param_dtype=DTYPES[c.param_dtype],
    )


class Task(base.Task):
    batch_axes: ClassVar = {"inputs": ("batch", "length"), "targets": ("batch", "length")}

    def __init__(
        self, config: ml_collections.ConfigDict, workdir: Path | None = None, load_data: bool = True
    ):
        super().__init__(config, workdir, load_data)
        self.block_size = config.data.block_size
        saved = workdir is not None and (workdir / tokenizers.TOKENIZER_FILE).is_file()
        self.tokenizer = tokenizers.load_tokenizer(workdir) if saved else None
        if load_data:
            text = load_text(config.data.path)
            if self.tokenizer is None:
                self.tokenizer = tokenizers.fit_tokenizer(
                    config.data.tokenizer, text, config.data.get("vocab_size", 0)
                )
            train_tokens, val_tokens = split_tokens(
                self.tokenizer.encode(text), config.data.val_fraction
            )
            self.train_windows = TokenWindows(train_tokens, self.block_size)
            self.val_windows = TokenWindows(val_tokens, self.block_size)
        if self.tokenizer is None:
            raise UserError("no tokenizer: the workdir has none and no data was loaded")
        with config.unlocked():
            config.model.vocab_size = self.tokenizer.vocab_size
        self.model = build_model(config.model, self.block_size)
        self.tx = make_optimizer(config.optim)

    # -- state and steps -------------------------------------------------------------------------
    def init_state(self, rng: jax.Array) -> TrainState:
        tokens = jnp.zeros((1, self.block_size), jnp.int32)
        params = self.model.init(rng, tokens)["params"]
        return TrainState.create(params, self.tx)

    def loss_fn(self, params: Any, batch: base.Batch, rng: jax.Array):
        logits = self.model.apply(
            {"params": params}, batch["inputs"], deterministic=False, rngs={"dropout": rng}
        )
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"]).mean()
        return loss, {"train/loss": loss}

    def train_step(self, state: TrainState, batch: base.Batch):
        return gradient_step(
            state, batch, self.loss_fn, self.config.seed, self.config.train.grad_accum
        )

    def eval_step(self, state: TrainState, batch: base.Batch) -> dict[str, jax.Array]:
        logits = self.model.apply({"params": state.params}, batch["inputs"])
        losses = optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"])
        return {"loss_sum": losses.sum(), "count": jnp.asarray(losses.size, jnp.float32)}

    def summarize_eval(self, sums: dict[str, np.ndarray]) -> dict[str, float]:
        return language_model_metrics(float(sums["loss_sum"]) / float(sums["count"]))

    # -- data ------------------------------------------------------------------------------------
    def train_batch(self, step: int) -> base.Batch:
        return self.train_windows.batch(
            self.config.seed,
            step,
            self.config.train.batch_size,
            jax.process_index(),
            jax.process_count(),
        )

    def eval_batches(self) -> Iterator[base.Batch]:
        for index in range(self.config.train.eval_batches):
            yield self.val_windows.batch(
                self.config.seed + EVAL_SEED_OFFSET,
                index,
                self.config.train.batch_size,
                jax.process_index(),
                jax.process_count(),
            )

    def save_assets(self, workdir: Path) -> None:
        tokenizers.save_tokenizer(self.tokenizer, workdir)

    # -- throughput ------------------------------------------------------------------------------
    def examples_per_step(self) -> tuple[str, float]:
        return "tokens", float(self.config.train.batch_size * self.block_size)

    def flops_per_step(self, state: TrainState) -> float:
        params = state.params
        num_params = sum(x.size for x in jax.tree.leaves(params))
        if "pos_embed" in params:  # a lookup, not a matmul
            num_params -= params["pos_embed"].size
        c = self.config.model
        per_token = transformer_flops_per_token(
            num_params, c.num_layers, self.block_size, c.emb_dim
        )
        return per_token * self.examples_per_step()[1]

    # -- sampling --------------------------------------------------------------------------------
    def generate(
        self,
        params: Any,
        prompt: str,
        num_tokens: int,
        seed: int = 0,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
    ) -> str:
        """Continue `prompt` by `num_tokens` characters/tokens."""
        prompt_ids = self.tokenizer.encode(prompt)
        if len(prompt_ids) == 0:
            raise UserError("--prompt must not be empty")
        ids = generate_ids(
            self.model,
            params,
            prompt_ids,
            num_tokens,
            jax.random.key(seed),
            temperature,
            top_k,
            top_p,
        )
        return self.tokenizer.decode(ids)

    def write_samples(self, state: TrainState, step: int, workdir: Path) -> str:
        s = self.config.sample
        text = self.generate(
            state.params, s.prompt, s.num_tokens, s.seed, s.temperature, s.top_k, s.top_p
        )
        if jax.process_index() == 0:
            out = workdir / "samples"
            out.mkdir(exist_ok=True)
            (out / f"step_{step:07d}.txt").write_text(text)
        return text


def generate_ids(
    model: DecoderLM,
    params: Any,
    prompt_ids: np.ndarray,
    num_tokens: int,
    rng: jax.Array,
    temperature: float,
    top_k: int,
    top_p: float,
) -> list[int]:
    """Autoregressive generation with a KV cache, for any length.

    The cache holds `max_len` positions. When it is full, decoding restarts from the last half
    window of text (as nanoGPT crops its context), so the positions never exceed the model's.
    """
    max_len = model.max_len
    ids = [int(i) for i in prompt_ids]
    keep = max(1, max_len // 2)
    window = 0
    while len(ids) < len(prompt_ids) + num_tokens:
        context = ids[-(max_len - 1) :] if window == 0 else ids[-keep:]
        new = _decode_window(
            model,
            params,
            jnp.asarray([context], jnp.int32),
            jax.random.fold_in(rng, window),
            temperature,
            top_k,
            top_p,
        )
        new = np.asarray(multihost_utils.process_allgather(new, tiled=True))
        ids.extend(int(i) for i in new[0])
        window += 1
    return ids[len(prompt_ids) : len(prompt_ids) + num_tokens]


@functools.partial(jax.jit, static_argnums=(0, 4, 5, 6))
def _decode_window(
    model: DecoderLM,
    params: Any,
    context: jax.Array,
    rng: jax.Array,
    temperature: float,
    top_k: int,
    top_p: float,
) -> jax.Array:
    """Feed `context` through the cache, then draw tokens until the cache is full."""
    steps = model.max_len - context.shape[1] + 1
    cache_shapes = jax.eval_shape(
        lambda: model.init(jax.random.key(0), context[:, :1], decode=True)["cache"]
    )
    cache = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), cache_shapes)
    logits, updated = model.apply(
        {"params": params, "cache": cache}, context, decode=True, mutable=["cache"]
    )
    first = sample_tokens(jax.random.fold_in(rng, 0), logits[:, -1], temperature, top_k, top_p)

    def step(carry, index):
        cache, token = carry
        logits, updated = model.apply(
            {"params": params, "cache": cache}, token[:, None], decode=True, mutable=["cache"]
        )
        token = sample_tokens(
            jax.random.fold_in(rng, index), logits[:, -1], temperature, top_k, top_p
        )
        return (updated["cache"], token), token

    _, rest = jax.lax.scan(step, (updated["cache"], first), jnp.arange(1, steps))
    return jnp.concatenate([first[:, None], rest.T], axis=1)
