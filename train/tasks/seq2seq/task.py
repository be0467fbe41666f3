"""Sequence-to-sequence translation: teacher-forced, label-smoothed cross-entropy on packed rows;
eval loss/perplexity; BLEU (sacreBLEU) of greedy or beam-search translations decoded with KV
caches for both attentions."""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import traverse_util
from jax.experimental import multihost_utils

from models.transformer import SEQ2SEQ_POS_ENCODINGS, EncoderDecoder
from train.capabilities import SampleWriter, TextSampler, TextSampling, Translator
from train.data import tokenizers
from train.data import translation as data
from train.data.parallel import ParallelData
from train.data.splits import Splits
from train.dtypes import model_dtypes
from train.errors import UserError
from train.optim import make_optimizer
from train.perf import transformer_flops_per_token
from train.state import TrainState, gradient_step
from train.tasks import base
from train.tasks.seq2seq.search import beam_search, greedy_search


def build_model(
    c: ml_collections.ConfigDict, max_len: int, pad_id: int, vocab_size: int
) -> EncoderDecoder:
    """The encoder-decoder `model.*` describes over `vocab_size` tokens, its position tables
    `max_len` long."""
    dtypes = model_dtypes(c)
    if c.pos_encoding not in SEQ2SEQ_POS_ENCODINGS:
        raise UserError(
            f"model.pos_encoding={c.pos_encoding!r} is unknown; allowed: "
            f"{', '.join(SEQ2SEQ_POS_ENCODINGS)}"
        )
    if c.emb_dim % c.num_heads:
        raise UserError(
            f"model.emb_dim={c.emb_dim} must be divisible by model.num_heads={c.num_heads}"
        )
    return EncoderDecoder(
        vocab_size=vocab_size,
        num_encoder_layers=c.num_encoder_layers,
        num_decoder_layers=c.num_decoder_layers,
        num_heads=c.num_heads,
        emb_dim=c.emb_dim,
        mlp_dim=c.mlp_dim,
        max_len=max_len,
        dropout=c.dropout,
        attention_dropout=c.attention_dropout,
        pos_encoding=c.pos_encoding,
        share_embeddings=c.share_embeddings,
        tie_output=c.tie_output,
        pre_norm=c.pre_norm,
        use_bias=c.use_bias,
        activation=c.activation,
        pad_id=pad_id,
        **dtypes,
    )


def smoothed_cross_entropy(
    logits: jax.Array, labels: jax.Array, smoothing: float
) -> tuple[jax.Array, jax.Array]:
    """(label-smoothed loss, plain NLL) per position. The smoothed target puts 1 - smoothing on
    the label and spreads `smoothing` uniformly over the vocabulary (Szegedy et al. 2016, as in
    Vaswani et al. 2017), computed without materialising the (..., vocab) target."""
    log_z = jax.nn.logsumexp(logits, axis=-1)
    nll = log_z - jnp.take_along_axis(logits, labels[..., None], axis=-1)[..., 0]
    uniform = log_z - logits.mean(axis=-1)  # cross-entropy against the uniform distribution
    return (1.0 - smoothing) * nll + smoothing * uniform, nll


def _check_config(config: ml_collections.ConfigDict) -> None:
    d, e = config.data, config.eval
    if d.tokenizer == "char":
        raise UserError("data.tokenizer='char' has no pad/bos/eos tokens; allowed for seq2seq: bpe")
    if d.max_len < 4:
        raise UserError(f"data.max_len={d.max_len} is too short; allowed: at least 4 tokens")
    if e.beam_size < 1:
        raise UserError(f"eval.beam_size={e.beam_size}: must be at least 1 (1 is greedy)")
    if e.length_penalty < 0:
        raise UserError(f"eval.length_penalty={e.length_penalty}: must be >= 0")
    if e.decode_batch_size < 1:
        raise UserError(f"eval.decode_batch_size={e.decode_batch_size}: must be at least 1")
    if not 0.0 <= config.loss.label_smoothing < 1.0:
        raise UserError(f"loss.label_smoothing={config.loss.label_smoothing} must lie in [0, 1)")


class Task(base.Task, TextSampler, Translator, SampleWriter):
    batch_axes: ClassVar = {name: ("batch", "length") for name in data.FIELDS}

    def __init__(
        self, config: ml_collections.ConfigDict, data: ParallelData, workdir: Path | None = None
    ):
        super().__init__(config, data, workdir)
        self.max_len = config.data.max_len
        self.tokenizer = data.tokenizer
        self.specials = data.specials
        tokenizers.check_vocab_size(config.model.get("vocab_size", 0), data.vocab_size)
        self.model = build_model(config.model, self.max_len, data.specials.pad, data.vocab_size)
        self.tx = make_optimizer(config.optim)

    @classmethod
    def load_data(
        cls, config: ml_collections.ConfigDict, workdir: Path | None, splits: Splits
    ) -> ParallelData:
        _check_config(config)
        return ParallelData(config, workdir, splits)

    def derived_settings(self) -> dict[str, Any]:
        return {"model.vocab_size": self.data.vocab_size}

    def vocab_size(self) -> int:
        return self.data.vocab_size

    # -- state and steps -------------------------------------------------------------------------
    def init_state(self, rng: jax.Array) -> TrainState:
        tokens = jnp.ones((1, self.max_len), jnp.int32)
        params = self.model.init(rng, tokens, tokens)["params"]
        return TrainState.create(params, self.tx)

    def _logits(
        self, params: Any, batch: base.Batch, deterministic: bool, rng: jax.Array | None = None
    ) -> jax.Array:
        """Teacher-forced next-target-token logits of a batch of packed rows."""
        return self.model.apply(
            {"params": params},
            batch["source"],
            batch["target_in"],
            batch["source_segments"],
            batch["target_segments"],
            batch["source_positions"],
            batch["target_positions"],
            deterministic=deterministic,
            rngs=None if rng is None else {"dropout": rng},
        )

    def loss_fn(
        self, params: Any, batch: base.Batch, rng: jax.Array
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        logits = self._logits(params, batch, deterministic=False, rng=rng)
        smoothed, nll = smoothed_cross_entropy(
            logits, batch["target_out"], self.config.loss.label_smoothing
        )
        weights = (batch["target_segments"] > 0).astype(jnp.float32)
        tokens = jnp.maximum(weights.sum(), 1.0)
        loss = (smoothed * weights).sum() / tokens
        pairs = jnp.sum((batch["target_positions"] == 0) & (batch["target_segments"] > 0))
        return loss, {
            "train/loss": loss,
            "train/nll": (nll * weights).sum() / tokens,
            "train/target_tokens": weights.sum(),
            "train/pairs": pairs.astype(jnp.float32),
        }

    def train_step(
        self, state: TrainState, batch: base.Batch
    ) -> tuple[TrainState, dict[str, jax.Array]]:
        return gradient_step(
            state, batch, self.loss_fn, self.config.seed, self.config.train.grad_accum
        )

    def eval_step(self, state: TrainState, batch: base.Batch) -> dict[str, jax.Array]:
        logits = self._logits(state.params, batch, deterministic=True)
        _, nll = smoothed_cross_entropy(logits, batch["target_out"], 0.0)
        weights = (batch["target_segments"] > 0).astype(jnp.float32)
        return {"loss_sum": (nll * weights).sum(), "count": weights.sum()}

    def summarize_eval(self, sums: dict[str, np.ndarray]) -> dict[str, float]:
        """eval/loss: nats per target token (EOS included, no label smoothing); eval/ppl."""
        loss = float(sums["loss_sum"]) / max(float(sums["count"]), 1.0)
        return {"eval/loss": loss, "eval/ppl": math.exp(min(loss, 700.0))}

    # -- data ------------------------------------------------------------------------------------
    def train_batch(self, step: int) -> base.Batch:
        return self.data.stream().batch(
            self.config.seed, step, jax.process_index(), jax.process_count()
        )

    def eval_batches(self) -> Iterator[base.Batch]:
        size = self.config.train.eval_batch_size
        self.data.eval_text()  # the eval split must have been loaded
        total = len(self.data.eval_rows["source"])
        share = size // jax.process_count()
        mine = slice(jax.process_index() * share, (jax.process_index() + 1) * share)
        for start in range(0, total, size):
            batch = {}
            for name, rows in self.data.eval_rows.items():
                chunk = rows[start : start + size]
                fill = self.specials.pad if name in ("source", "target_in", "target_out") else 0
                padding = np.full((size - len(chunk), rows.shape[1]), fill, rows.dtype)
                batch[name] = np.concatenate([chunk, padding])[mine]  # padding rows weigh 0
            yield batch

    def save_assets(self, workdir: Path) -> None:
        tokenizers.save_tokenizer(self.tokenizer, workdir)

    # -- translation -----------------------------------------------------------------------------
    def translate(self, state: TrainState, sources: list[str]) -> list[str]:
        """Detokenized translations of `sources` with the configured search (eval.*).

        Sentences are decoded in order of length, in batches whose source rows are cut to a
        multiple of 16 slots (a few compiled shapes, little padding). With replicated
        parameters (data-parallel) the batches go round the local devices and run at once.
        """
        e, params = self.config.eval, state.params
        ids = data.Ragged(self.tokenizer.encode_batch([data.clean(s) for s in sources]))
        lengths = ids.lengths() + 1  # EOS
        order = np.argsort(lengths, kind="stable")
        replicas = _local_replicas(params)
        size = e.decode_batch_size
        pending = []
        for number, start in enumerate(range(0, len(order), size)):
            chunk = order[start : start + size]
            slots = min(self.max_len, -(-int(lengths[chunk].max()) // 16) * 16)
            rows = data.source_rows(ids, chunk, slots, self.specials)
            rows = np.concatenate([rows, np.repeat(rows[:1], size - len(rows), axis=0)])
            if replicas:
                device, replica = replicas[number % len(replicas)]
                batch_params, rows = replica, jax.device_put(rows, device)
            else:
                batch_params = params
            tokens = decode_sources(  # dispatched asynchronously
                self.model,
                batch_params,
                jnp.asarray(rows),
                e.beam_size,
                float(e.length_penalty),
                self.max_len - 1,
                self.specials,
            )
            pending.append((chunk, tokens))
        out = [""] * len(sources)
        for chunk, tokens in pending:
            if not replicas:
                tokens = multihost_utils.process_allgather(tokens, tiled=True)
            for index, row in zip(chunk, np.asarray(tokens), strict=False):
                out[index] = self._detokenize(row)
        return out

    def _detokenize(self, row: np.ndarray) -> str:
        ends = np.flatnonzero(row == self.specials.eos)
        ids = row[: ends[0]] if len(ends) else row
        return " ".join(self.tokenizer.decode(ids).split())

    def decode_settings(self) -> dict[str, Any]:
        """How `translate` searches, as recorded beside each BLEU score."""
        e = self.config.eval
        return {
            "search": "greedy" if e.beam_size == 1 else "beam",
            "beam_size": e.beam_size,
            "length_penalty": "GNMT ((5 + |Y|) / 6)^alpha" if e.beam_size > 1 else None,
            "alpha": e.length_penalty if e.beam_size > 1 else None,
            "max_output_tokens": self.max_len - 1,
        }

    def eval_pairs_text(self) -> tuple[list[str], list[str]]:
        return self.data.eval_text()

    def eval_split_description(self) -> dict[str, Any]:
        d = self.config.data
        return {
            "dataset": d.name,
            "split": d.eval_split,
            "direction": f"{d.source_lang}-{d.target_lang}",
            "eval_pairs_too_long_for_loss": int(self.data.eval_too_long),
        }

    def sample_text(self, state: TrainState, prompt: str, settings: TextSampling) -> str:
        """`genlab sample --prompt`: each line of the prompt translated with the configured
        search (eval.beam_size, eval.length_penalty), up to data.max_len - 1 tokens; the
        sampling settings (num_tokens, seed, temperature, top-k/p) do not apply."""
        lines = [line for line in prompt.split("\n") if line.strip()]
        if not lines:
            raise UserError("--prompt must hold at least one sentence to translate")
        return "\n" + "\n".join(self.translate(state, lines))

    def write_samples(self, state: TrainState, step: int, workdir: Path) -> str | None:
        if self.data.eval_sources is None:  # no eval split loaded: nothing to translate
            return None
        sources, references = self.data.eval_text()
        sources = sources[: self.config.sample.num_examples]
        if not sources:
            return None
        hypotheses = self.translate(state, sources)
        text = "\n\n".join(
            f"{s}\n=> {h}\n(reference: {r})"
            for s, h, r in zip(sources, hypotheses, references, strict=False)
        )
        if jax.process_index() == 0:
            out = workdir / "samples"
            out.mkdir(exist_ok=True)
            (out / f"step_{step:07d}.txt").write_text(text + "\n")
        return text

    # -- throughput ------------------------------------------------------------------------------
    def examples_per_step(self) -> tuple[str, float]:
        """Target token slots (padding included) per step."""
        return "tokens", float(self.config.train.batch_size * self.max_len)

    def flops_per_step(self, state: TrainState) -> float:
        """6 N + 12 L T d per token (PaLM's count) for each stack: the encoder over the source
        slots; the decoder, output projection included, over the target slots, its attention
        counted twice (self and cross, both over `max_len` keys)."""
        params, c = state.params, self.config.model

        def size(tree: Any) -> int:
            return sum(x.size for name, x in _leaves_with_names(tree) if "pos_embed" not in name)

        output = self.data.vocab_size * c.emb_dim
        slots = self.config.train.batch_size * self.max_len
        encoder = transformer_flops_per_token(
            size(params["encoder"]), c.num_encoder_layers, self.max_len, c.emb_dim
        )
        decoder = transformer_flops_per_token(
            size(params["decoder"]) + output, 2 * c.num_decoder_layers, self.max_len, c.emb_dim
        )
        return (encoder + decoder) * slots


def _leaves_with_names(tree: Any) -> list[tuple[str, Any]]:
    return [
        (jax.tree_util.keystr(path), x) for path, x in jax.tree_util.tree_leaves_with_path(tree)
    ]


def _local_replicas(params: Any) -> list[tuple[jax.Device, Any]] | None:
    """(device, that device's copy of `params`) for each local device, when every parameter is
    fully replicated; None when they are sharded (FSDP, tensor parallelism)."""
    leaves = jax.tree.leaves(params)
    if not all(isinstance(x, jax.Array) and x.sharding.is_fully_replicated for x in leaves):
        return None
    devices = [shard.device for shard in leaves[0].addressable_shards]

    def on(device: jax.Device) -> Any:
        return jax.tree.map(
            lambda x: next(s.data for s in x.addressable_shards if s.device == device), params
        )

    return [(device, on(device)) for device in devices]


@functools.partial(jax.jit, static_argnums=(0, 3, 4, 5, 6))
def decode_sources(
    model: EncoderDecoder,
    params: Any,
    source: jax.Array,
    beam_size: int,
    alpha: float,
    max_steps: int,
    specials: data.Specials,
) -> jax.Array:
    """Best translation ids (batch, max_steps) of source rows: greedy for beam 1, else beam
    search with GNMT's length penalty `alpha`."""
    step, cache, first = start_decoding(model, params, source, beam_size, specials)
    if beam_size == 1:
        return greedy_search(step, cache, first, max_steps, specials.eos, specials.pad)
    tokens, _ = beam_search(
        step, cache, first, beam_size, max_steps, specials.eos, specials.pad, alpha
    )
    return tokens


def start_decoding(
    model: EncoderDecoder, params: Any, source: jax.Array, beam_size: int, specials: data.Specials
) -> tuple[Any, Any, jax.Array]:
    """Encode the source rows once, feed BOS to each of their `beam_size` beams (rows
    b * beam_size + k), filling the decoder's self- and cross-attention caches; return the
    search's `step_fn`, its cache and the first logits. Padding and BOS are never output."""
    segments = (source != specials.pad).astype(jnp.int32)
    encoded = model.apply({"params": params}, source, segments, method=EncoderDecoder.encode)
    encoded = jnp.repeat(encoded, beam_size, axis=0)
    segments = jnp.repeat(segments, beam_size, axis=0)
    start = jnp.full((encoded.shape[0], 1), specials.bos, jnp.int32)
    never = jnp.isin(jnp.arange(model.vocab_size), jnp.asarray([specials.pad, specials.bos]))

    def run(
        tokens: jax.Array, encoder_output: jax.Array | None, cache: Any
    ) -> tuple[jax.Array, Any]:
        logits, updated = model.apply(
            {"params": params, "cache": cache},
            tokens,
            encoder_output,
            segments,
            decode=True,
            mutable=["cache"],
            method=EncoderDecoder.decode,
        )
        return jnp.where(never, -jnp.inf, logits[:, -1]), updated["cache"]

    shapes = jax.eval_shape(
        lambda: model.init(
            jax.random.key(0), start, encoded, segments, decode=True, method=EncoderDecoder.decode
        )["cache"]
    )
    cache = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
    first, cache = run(start, encoded, cache)
    # The cross-attention keys/values are the same at every step and for every beam of a
    # sentence: keep them out of the search's loop state, so beams never copy them around.
    growing, fixed = _split_cross_cache(cache)

    def step(growing: Any, tokens: jax.Array) -> tuple[jax.Array, Any]:
        logits, cache = run(tokens[:, None], None, _merge(growing, fixed))
        return logits, _split_cross_cache(cache)[0]

    return step, growing, first


def _split_cross_cache(cache: Any) -> tuple[dict, dict]:
    """(self-attention cache and counters, cross-attention keys/values), as flat dicts."""
    flat = traverse_util.flatten_dict(cache)
    fixed = {k: v for k, v in flat.items() if k[-1].startswith("cross_")}
    return {k: v for k, v in flat.items() if k not in fixed}, fixed


def _merge(growing: dict, fixed: dict) -> Any:
    return traverse_util.unflatten_dict({**growing, **fixed})
