"""Drawing text from a decoder LM: temperature, top-k and nucleus (top-p) sampling of next-token
logits, with a KV cache (Transformer) or a recurrent state (SSM, LSTM)."""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from models.rnn import LSTMLM
from models.ssm import SSMLM
from models.transformer import DecoderLM

LanguageModel = DecoderLM | SSMLM | LSTMLM


def filter_logits(logits: jax.Array, top_k: int = 0, top_p: float = 1.0) -> jax.Array:
    """Set to -inf every logit outside the top-k and outside the smallest top-p probability mass."""
    if top_k > 0:
        kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    if top_p < 1.0:
        sorted_logits = jnp.sort(logits, axis=-1)[..., ::-1]
        probs = jax.nn.softmax(sorted_logits, axis=-1)
        mass_before = jnp.cumsum(probs, axis=-1) - probs
        # The smallest logit still kept: the last one whose preceding mass is below top_p.
        kept = jnp.where(mass_before < top_p, sorted_logits, jnp.inf)
        threshold = jnp.min(kept, axis=-1, keepdims=True)
        logits = jnp.where(logits < threshold, -jnp.inf, logits)
    return logits


def sample_tokens(
    rng: jax.Array, logits: jax.Array, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0
) -> jax.Array:
    """Draw one token per row of `logits` (..., vocab); temperature 0 means greedy."""
    if temperature == 0.0:
        return jnp.argmax(logits, axis=-1)
    logits = filter_logits(logits / temperature, top_k, top_p)
    return jax.random.categorical(rng, logits, axis=-1)


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
