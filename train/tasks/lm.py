"""Decoder-only language modelling: next-token cross-entropy, perplexity/bpc, sampling.

`model.arch` picks the network: a Transformer (`transformer`, KV-cache sampling in windows), a
Mamba-style selective SSM (`ssm`) or an LSTM (`lstm`); the last two sample from their recurrent
state, O(1) memory per token at any length.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from models.layers import cudnn_supports
from models.rnn import LSTMLM
from models.ssm import SSMLM
from models.transformer import POS_ENCODINGS, DecoderLM
from train.data import tokenizers
from train.data.run_tokenizer import run_tokenizer
from train.data.text import TokenWindows, load_text, split_tokens
from train.decoding import sample_tokens
from train.dtypes import model_dtypes
from train.errors import UserError
from train.losses import token_cross_entropy
from train.metrics.text import language_model_metrics
from train.optim import make_optimizer
from train.perf import transformer_flops_per_token
from train.state import TrainState, gradient_step
from train.tasks import base

ARCHS = ("transformer", "ssm", "lstm")
SYNTHETIC_TOKENS = 1 << 20  # per split; windows are drawn from it at random
EVAL_SEED_OFFSET = 10_007  # eval windows come from a different stream than training batches

LanguageModel = DecoderLM | SSMLM | LSTMLM


def build_model(model_config: ml_collections.ConfigDict, max_len: int) -> LanguageModel:
    """The network `model.arch` names; `max_len` is the Transformer's context length."""
    c = model_config
    dtypes = model_dtypes(c)
    arch = c.get("arch", "transformer")
    if arch not in ARCHS:
        raise UserError(f"model.arch={arch!r} is unknown; allowed: {', '.join(ARCHS)}")
    common = dict(
        vocab_size=c.vocab_size,
        num_layers=c.num_layers,
        emb_dim=c.emb_dim,
        dropout=c.dropout,
        tie_embeddings=c.tie_embeddings,
        **dtypes,
    )
    if arch == "lstm":
        return LSTMLM(**common)
    if arch == "ssm":
        ssm = dict(c.get("ssm", {}))  # keys left out keep the model's (Mamba's) defaults
        for key, low in (("state_dim", 1), ("conv_width", 1), ("expand", 1), ("dt_rank", 0)):
            if key in ssm and ssm[key] < low:
                raise UserError(f"model.ssm.{key}={ssm[key]} must be at least {low}")
        return SSMLM(**common, **ssm)
    if c.pos_encoding not in POS_ENCODINGS:
        raise UserError(
            f"model.pos_encoding={c.pos_encoding!r} is unknown; allowed: {', '.join(POS_ENCODINGS)}"
        )
    if c.emb_dim % c.num_heads:
        raise UserError(
            f"model.emb_dim={c.emb_dim} must be divisible by model.num_heads={c.num_heads}"
        )
    attention_impl = c.get("attention_impl", "auto")
    check_attention_impl(attention_impl, dtypes["dtype"], c.emb_dim // c.num_heads)
    remat = c.get("remat", "none")  # its allowed values are checked with the config
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
        attention_impl=attention_impl,
        remat=remat,
        **dtypes,
    )


def check_attention_impl(impl: str, dtype: Any, head_dim: int) -> None:
    """`model.attention_impl=cudnn` must be usable on this machine (the config check knows only
    the allowed names)."""
    if impl == "cudnn" and not cudnn_supports(dtype, head_dim):
        raise UserError(
            f"model.attention_impl='cudnn' needs a GPU, model.dtype bfloat16 and a head size "
            f"(emb_dim / num_heads) that is a multiple of 8 up to 128; here: backend "
            f"{jax.default_backend()}, dtype {jnp.dtype(dtype).name}, head size {head_dim}"
        )


class Task(base.Task):
    batch_axes: ClassVar = {"inputs": ("batch", "length"), "targets": ("batch", "length")}

    def __init__(
        self, config: ml_collections.ConfigDict, workdir: Path | None = None, load_data: bool = True
    ):
        super().__init__(config, workdir, load_data)
        self.block_size = config.data.block_size
        self.arch = config.model.get("arch", "transformer")
        self.tokens_per_char: float | None = None  # of the validation text, for eval/bpc
        d = config.data
        source = d.get("source", "text")  # text | synthetic, checked with the config
        self.tokenizer: tokenizers.Tokenizer | None = None
        if source == "synthetic":
            self._synthetic_data(config)
        else:
            self._text_data(config, workdir, load_data)
        self.model = build_model(config.model, self.block_size)
        self.tx = make_optimizer(config.optim)

    def _synthetic_data(self, config: ml_collections.ConfigDict) -> None:
        """Uniformly random tokens for throughput runs: no file, no tokenizer, no samples. The
        loss stays near log(vocab_size); only speed and memory mean something."""
        d = config.data
        if d.vocab_size < 2:
            raise UserError(
                f"data.vocab_size={d.vocab_size}: data.source=synthetic needs the vocabulary "
                "size (at least 2), e.g. 50304 for GPT-2"
            )
        count = max(SYNTHETIC_TOKENS, 4 * (self.block_size + 1))
        rng = np.random.default_rng(config.seed)
        self.train_windows = TokenWindows(
            rng.integers(0, d.vocab_size, count, np.int32), self.block_size
        )
        self.val_windows = TokenWindows(
            rng.integers(0, d.vocab_size, count, np.int32), self.block_size
        )
        with config.unlocked():
            config.model.vocab_size = d.vocab_size

    def _text_data(
        self, config: ml_collections.ConfigDict, workdir: Path | None, load_data: bool
    ) -> None:
        """A text corpus, its tokenizer (fitted, or reused from a run) and its token windows."""
        d = config.data
        fit = None
        if load_data:
            text = load_text(d.path)
            val_path = d.get("val_path", "")
            if val_path:
                train_text, val_text = text, load_text(val_path)
            else:
                train_text, val_text = split_tokens(text, d.val_fraction)
            # A subword tokenizer learns from the training text only; the char vocabulary is
            # the whole file's (nanoGPT's 65 characters for Tiny Shakespeare).
            fit_text = text if d.tokenizer == "char" else train_text
            fit = functools.partial(
                tokenizers.fit_tokenizer, d.tokenizer, fit_text, d.get("vocab_size", 0)
            )
        self.tokenizer = run_tokenizer(config, workdir, fit)
        if load_data:
            train_tokens = self.tokenizer.encode(self._restrict(train_text, d.path))
            val_text = self._restrict(val_text, val_path or d.path)
            val_tokens = self.tokenizer.encode(val_text)
            self.tokens_per_char = len(val_tokens) / max(len(val_text), 1)
            self.train_windows = TokenWindows(train_tokens, self.block_size)
            self.val_windows = TokenWindows(val_tokens, self.block_size)
        with config.unlocked():
            config.model.vocab_size = self.tokenizer.vocab_size

    def _restrict(self, text: str, source: str) -> str:
        """`text` with the characters a reused char vocabulary lacks handled as
        `data.unknown_chars` says (subword tokenizers handle unseen text themselves)."""
        policy = self.config.data.get("unknown_chars", "error")
        if not isinstance(self.tokenizer, tokenizers.CharTokenizer):
            tokenizers.check_unknown_char_policy(policy)
            return text
        replacement = self.config.data.get("unknown_replacement", " ")
        text, unknown = tokenizers.restrict_to_alphabet(
            text, self.tokenizer.chars, policy, replacement
        )
        if unknown and policy != "error" and jax.process_index() == 0:
            verb = "dropped" if policy == "drop" else f"replaced by {replacement!r}"
            print(
                f"data: {sum(unknown.values())} characters of {source} outside the "
                f"vocabulary {verb}: {''.join(unknown)!r}",
                flush=True,
            )
        return text

    # -- state and steps -------------------------------------------------------------------------
    def init_state(self, rng: jax.Array) -> TrainState:
        tokens = jnp.zeros((1, self.block_size), jnp.int32)
        params = self.model.init(rng, tokens)["params"]
        return TrainState.create(params, self.tx)

    def loss_fn(self, params: Any, batch: base.Batch, rng: jax.Array):
        logits = self.model.apply(
            {"params": params}, batch["inputs"], deterministic=False, rngs={"dropout": rng}
        )
        loss = token_cross_entropy(logits, batch["targets"]).mean()
        return loss, {"train/loss": loss}

    def train_step(self, state: TrainState, batch: base.Batch):
        return gradient_step(
            state, batch, self.loss_fn, self.config.seed, self.config.train.grad_accum
        )

    def eval_step(self, state: TrainState, batch: base.Batch) -> dict[str, jax.Array]:
        logits = self.model.apply({"params": state.params}, batch["inputs"])
        losses = token_cross_entropy(logits, batch["targets"])
        return {"loss_sum": losses.sum(), "count": jnp.asarray(losses.size, jnp.float32)}

    def summarize_eval(self, sums: dict[str, np.ndarray]) -> dict[str, float]:
        return language_model_metrics(
            float(sums["loss_sum"]) / float(sums["count"]), self.tokens_per_char
        )

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
        if self.tokenizer is not None:
            tokenizers.save_tokenizer(self.tokenizer, workdir)

    # -- throughput ------------------------------------------------------------------------------
    def examples_per_step(self) -> tuple[str, float]:
        return "tokens", float(self.config.train.batch_size * self.block_size)

    def flops_per_step(self, state: TrainState) -> float:
        """Transformer: 6 N + 12 L T d per token (PaLM). SSM/LSTM: 6 N per token, since every
        parameter takes part in one multiply-add per token; the SSM adds 18 L E S for its scan
        (B x, the state update and C h: 6 FLOPs per inner channel E and state S, x3 for the
        backward). Gate nonlinearities and the parallel scan's extra combines are left out."""
        params = state.params
        num_params = sum(x.size for x in jax.tree.leaves(params))
        if "pos_embed" in params:  # a lookup, not a matmul
            num_params -= params["pos_embed"].size
        c = self.config.model
        if self.arch == "transformer":
            per_token = transformer_flops_per_token(
                num_params, c.num_layers, self.block_size, c.emb_dim
            )
        else:
            per_token = 6.0 * num_params
            if self.arch == "ssm":
                m = self.model
                per_token += 18.0 * m.num_layers * m.expand * m.emb_dim * m.state_dim
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
        if self.tokenizer is None:
            raise UserError("a data.source=synthetic run has no tokenizer: it cannot sample text")
        prompt_ids = self.tokenizer.encode(prompt)
        if len(prompt_ids) == 0:
            raise UserError("--prompt must not be empty")
        generate = generate_ids if self.arch == "transformer" else generate_ids_recurrent
        ids = generate(
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

    def write_samples(self, state: TrainState, step: int, workdir: Path) -> str | None:
        if self.tokenizer is None:  # synthetic tokens: nothing readable to sample
            return None
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
        new = decode_tokens(
            model,
            params,
            jnp.asarray([context], jnp.int32),
            max_len - len(context) + 1,  # until the cache is full
            jax.random.fold_in(rng, window),
            temperature,
            top_k,
            top_p,
        )
        new = np.asarray(multihost_utils.process_allgather(new, tiled=True))
        ids.extend(int(i) for i in new[0])
        window += 1
    return ids[len(prompt_ids) : len(prompt_ids) + num_tokens]


def generate_ids_recurrent(
    model: SSMLM | LSTMLM,
    params: Any,
    prompt_ids: np.ndarray,
    num_tokens: int,
    rng: jax.Array,
    temperature: float,
    top_k: int,
    top_p: float,
) -> list[int]:
    """Autoregressive generation from a recurrent state: the prompt runs through once, then each
    token is one step of the recurrence. The state has a fixed size, so any length works in one
    jit-compiled `lax.scan`, with no window restarts."""
    context = jnp.asarray([[int(i) for i in prompt_ids]], jnp.int32)
    new = decode_tokens(model, params, context, num_tokens, rng, temperature, top_k, top_p)
    new = np.asarray(multihost_utils.process_allgather(new, tiled=True))
    return [int(i) for i in new[0]]


@functools.partial(jax.jit, static_argnums=(0, 3, 5, 6, 7))
def decode_tokens(
    model: LanguageModel,
    params: Any,
    context: jax.Array,
    num_tokens: int,
    rng: jax.Array,
    temperature: float,
    top_k: int,
    top_p: float,
) -> jax.Array:
    """Feed `context` into an empty cache (a Transformer's KV cache or a recurrent state), then
    draw `num_tokens` tokens, one cached step each: (batch, num_tokens)."""
    cache_shapes = jax.eval_shape(
        lambda: model.init(jax.random.key(0), context[:, :1], decode=True)["cache"]
    )
    cache = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), cache_shapes)
    logits, updated = model.apply(
        {"params": params, "cache": cache}, context, decode=True, mutable=["cache"]
    )
    last = logits[:, -1].astype(jnp.float32)
    first = sample_tokens(jax.random.fold_in(rng, 0), last, temperature, top_k, top_p)

    def step(carry, index):
        cache, token = carry
        logits, updated = model.apply(
            {"params": params, "cache": cache}, token[:, None], decode=True, mutable=["cache"]
        )
        token = sample_tokens(
            jax.random.fold_in(rng, index),
            logits[:, -1].astype(jnp.float32),
            temperature,
            top_k,
            top_p,
        )
        return (updated["cache"], token), token

    _, rest = jax.lax.scan(step, (updated["cache"], first), jnp.arange(1, num_tokens))
    return jnp.concatenate([first[:, None], rest.T], axis=1)
