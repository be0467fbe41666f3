"""Decoder-only language modelling: next-token cross-entropy, perplexity/bpc, sampling.

`model.arch` picks the network: a Transformer (`transformer`, KV-cache sampling in windows), a
Mamba-style selective SSM (`ssm`) or an LSTM (`lstm`); the last two sample from their recurrent
state, O(1) memory per token at any length.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from models.layers import cudnn_supports
from models.rnn import LSTMLM
from models.ssm import SSMLM
from models.transformer import POS_ENCODINGS, DecoderLM
from train.capabilities import SampleWriter, TextSampler, TextSampling
from train.data import tokenizers
from train.data.lm import LMData, load_lm_data
from train.data.splits import Splits
from train.dtypes import model_dtypes
from train.errors import UserError
from train.losses import token_cross_entropy
from train.metrics.text import language_model_metrics
from train.optim import make_optimizer
from train.perf import transformer_flops_per_token
from train.state import TrainState, gradient_step
from train.tasks import base
from train.tasks.lm.sampling import LanguageModel, generate_ids, generate_ids_recurrent

ARCHS = ("transformer", "ssm", "lstm")
EVAL_SEED_OFFSET = 10_007  # eval windows come from a different stream than training batches


def build_model(
    model_config: ml_collections.ConfigDict, max_len: int, vocab_size: int
) -> LanguageModel:
    """The network `model.arch` names over `vocab_size` tokens (the data's; a non-zero
    `model.vocab_size` must agree); `max_len` is the Transformer's context length."""
    c = model_config
    tokenizers.check_vocab_size(c.get("vocab_size", 0), vocab_size)
    dtypes = model_dtypes(c)
    arch = c.get("arch", "transformer")
    if arch not in ARCHS:
        raise UserError(f"model.arch={arch!r} is unknown; allowed: {', '.join(ARCHS)}")
    common = dict(
        vocab_size=vocab_size,
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
        vocab_size=vocab_size,
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
        # Llama-style options (experiments/llama.py); runs saved before these keys existed
        # lack them and keep GPT-2's block
        num_kv_heads=c.get("num_kv_heads", 0),
        rope_theta=c.get("rope_theta", 10_000.0),
        norm=c.get("norm", "layernorm"),
        mlp=c.get("mlp", "plain"),
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


class DecoderTask(base.Task):
    """Next-token training and held-out loss of a decoder over `LMData`'s windows: what the
    text LM below and the pixel LM (train/tasks/pixel_lm.py) share."""

    batch_axes: ClassVar = {"inputs": ("batch", "length"), "targets": ("batch", "length")}

    def __init__(
        self, config: ml_collections.ConfigDict, data: LMData, workdir: Path | None = None
    ):
        super().__init__(config, data, workdir)
        self.block_size = config.data.block_size
        self.arch = config.model.get("arch", "transformer")
        self.tokenizer = data.tokenizer
        self.model = build_model(config.model, self.block_size, data.vocab_size)
        self.tx = make_optimizer(config.optim)

    @classmethod
    def load_data(
        cls, config: ml_collections.ConfigDict, workdir: Path | None, splits: Splits
    ) -> LMData:
        return load_lm_data(config, workdir, splits)

    def derived_settings(self) -> dict[str, Any]:
        return {"model.vocab_size": self.data.vocab_size}

    def vocab_size(self) -> int:
        return self.data.vocab_size

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
            float(sums["loss_sum"]) / float(sums["count"]), self.data.tokens_per_char
        )

    # -- data ------------------------------------------------------------------------------------
    def train_batch(self, step: int) -> base.Batch:
        return self.data.train_windows().batch(
            self.config.seed,
            step,
            self.config.train.batch_size,
            jax.process_index(),
            jax.process_count(),
        )

    def eval_batches(self) -> Iterator[base.Batch]:
        windows = self.data.val_windows()
        for index in range(self.config.train.eval_batches):
            yield windows.batch(
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


class Task(DecoderTask, TextSampler, SampleWriter):
    """The text LM: windows of a tokenized corpus (or shards, or random tokens), sampled as
    text."""

    def sample_text(self, state: TrainState, prompt: str, settings: TextSampling) -> str:
        """Continue `prompt` by `settings.num_tokens` characters/tokens."""
        if self.tokenizer is None:
            source = self.config.data.get("source", "text")
            raise UserError(f"a data.source={source} run has no tokenizer: it cannot sample text")
        prompt_ids = self.tokenizer.encode(prompt)
        if len(prompt_ids) == 0:
            raise UserError("--prompt must not be empty")
        generate = generate_ids if self.arch == "transformer" else generate_ids_recurrent
        s = settings
        ids = generate(
            self.model,
            state.params,
            prompt_ids,
            s.num_tokens,
            jax.random.key(s.seed),
            s.temperature,
            s.top_k,
            s.top_p,
        )
        return self.tokenizer.decode(ids)

    def write_samples(self, state: TrainState, step: int, workdir: Path) -> str | None:
        if self.tokenizer is None:  # synthetic tokens: nothing readable to sample
            return None
        s = self.config.sample
        settings = TextSampling(s.num_tokens, s.seed, s.temperature, s.top_k, s.top_p)
        text = self.sample_text(state, s.prompt, settings)
        if jax.process_index() == 0:
            out = workdir / "samples"
            out.mkdir(exist_ok=True)
            (out / f"step_{step:07d}.txt").write_text(text)
        return text
