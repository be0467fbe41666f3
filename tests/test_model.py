"""The Transformer LM: causality, KV-cache decoding, positional encodings, sampling filters."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny_decoder_lm

from models.transformer import DecoderLM
from train.tasks.lm.sampling import filter_logits, sample_tokens


def _model(pos_encoding: str, tie: bool = True) -> DecoderLM:
    return tiny_decoder_lm(pos_encoding=pos_encoding, tie_embeddings=tie)


@pytest.mark.parametrize(
    ("pos_encoding", "tie"), [("learned", True), ("sinusoidal", False), ("rope", True)]
)
def test_kv_cache_decoding_matches_full_forward(pos_encoding, tie):
    model = _model(pos_encoding, tie)
    tokens = jax.random.randint(jax.random.key(0), (3, 16), 0, 13)
    params = nn.meta.unbox(model.init(jax.random.key(1), tokens)["params"])
    full = model.apply({"params": params}, tokens)

    cache = model.init(jax.random.key(1), tokens[:, :1], decode=True)["cache"]
    cache = jax.tree.map(jnp.zeros_like, cache)
    pieces = []
    for start, stop in [(0, 5), *[(t, t + 1) for t in range(5, 16)]]:  # a prompt, then 1 by 1
        logits, mutated = model.apply(
            {"params": params, "cache": cache},
            tokens[:, start:stop],
            decode=True,
            mutable=["cache"],
        )
        cache = mutated["cache"]
        pieces.append(logits)
    np.testing.assert_allclose(jnp.concatenate(pieces, axis=1), full, atol=1e-5, rtol=1e-5)


def test_future_tokens_do_not_change_past_logits():
    model = _model("learned")
    tokens = jax.random.randint(jax.random.key(0), (2, 16), 0, 13)
    params = model.init(jax.random.key(1), tokens)["params"]
    changed = tokens.at[:, 10:].set((tokens[:, 10:] + 1) % 13)
    a, b = model.apply({"params": params}, tokens), model.apply({"params": params}, changed)
    np.testing.assert_allclose(a[:, :10], b[:, :10], atol=1e-6)
    assert not np.allclose(a[:, 10:], b[:, 10:])


def test_every_parameter_has_logical_axis_names():
    variables = _model("learned", tie=False).init(jax.random.key(0), jnp.zeros((1, 16), jnp.int32))
    boxes = jax.tree.leaves(variables["params"], is_leaf=lambda x: isinstance(x, nn.Partitioned))
    assert boxes and all(isinstance(b, nn.Partitioned) for b in boxes)
    assert all(len(b.names) == b.value.ndim for b in boxes)


def test_top_k_and_top_p_filters():
    logits = jnp.log(jnp.asarray([[0.5, 0.3, 0.15, 0.05]]))
    top2 = filter_logits(logits, top_k=2)
    assert np.isfinite(top2[0, :2]).all() and np.isneginf(top2[0, 2:]).all()
    nucleus = filter_logits(logits, top_p=0.7)  # 0.5 + 0.3 is the smallest mass >= 0.7
    assert np.isfinite(nucleus[0, :2]).all() and np.isneginf(nucleus[0, 2:]).all()
    assert np.isfinite(filter_logits(logits, top_p=0.4)[0]).sum() == 1
    draws = jax.vmap(lambda k: sample_tokens(k, logits[0], 1.0, top_k=2))(
        jax.random.split(jax.random.key(0), 500)
    )
    assert set(np.unique(draws)) == {0, 1}
    assert int(sample_tokens(jax.random.key(0), logits[0], temperature=0.0)) == 0


def test_bfloat16_compute_keeps_float32_params_and_close_logits():
    tokens = jax.random.randint(jax.random.key(0), (2, 16), 0, 13)
    f32 = _model("rope")
    params = nn.meta.unbox(f32.init(jax.random.key(1), tokens)["params"])
    bf16 = f32.clone(dtype=jnp.bfloat16)
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))
    full, half = f32.apply({"params": params}, tokens), bf16.apply({"params": params}, tokens)
    # Logits stay in the compute dtype; the loss upcasts them inside its reductions.
    assert half.dtype == jnp.bfloat16 and full.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(half, np.float32), full, atol=0.1)


def test_bidirectional_attention_sees_the_future_and_masks_hide_keys():
    from models.layers import MultiHeadAttention

    x = jax.random.normal(jax.random.key(0), (2, 6, 8))
    positions = jnp.broadcast_to(jnp.arange(6), (2, 6))
    attention = MultiHeadAttention(num_heads=2, max_len=6, causal=False)
    params = attention.init(jax.random.key(1), x, positions)["params"]
    changed = x.at[:, 4:].add(1.0)
    a = attention.apply({"params": params}, x, positions)
    b = attention.apply({"params": params}, changed, positions)
    assert not np.allclose(a[:, :4], b[:, :4])  # every position sees the changed ones

    keep = jnp.arange(6)[None, None, None, :] < 4  # keys 4 and 5 hidden (padding)
    a = attention.apply({"params": params}, x, positions, mask=keep)
    b = attention.apply({"params": params}, changed, positions, mask=keep)
    np.testing.assert_allclose(a[:, :4], b[:, :4], atol=1e-6)
