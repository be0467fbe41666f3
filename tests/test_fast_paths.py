"""The paths taken for speed compute what the plain ones do: one-hot token lookups, sliced
position rows, and the float32 cross-entropy over low-precision logits."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from models.layers import ONE_HOT_MAX_VOCAB, position_rows, token_embedding
from train.losses import token_cross_entropy


@pytest.mark.parametrize("vocab", [65, ONE_HOT_MAX_VOCAB + 1])
def test_token_lookup_and_its_gradient_equal_a_gather(vocab):
    embed = token_embedding(vocab, 8, jnp.float32, jnp.float32)
    tokens = jax.random.randint(jax.random.key(0), (4, 16), 0, vocab)
    params = nn.meta.unbox(embed.init(jax.random.key(1), tokens)["params"])
    table = params["embedding"]
    weights = jax.random.normal(jax.random.key(2), (4, 16, 8))

    def loss(p):
        return jnp.sum(embed.apply({"params": p}, tokens) * weights)

    def reference(t):
        return jnp.sum(jnp.take(t, tokens, axis=0) * weights)

    np.testing.assert_array_equal(embed.apply({"params": params}, tokens), table[tokens])
    np.testing.assert_allclose(
        jax.grad(loss)(params)["embedding"], jax.grad(reference)(table), rtol=1e-6, atol=1e-6
    )


@pytest.mark.parametrize("start", [0, 5])
def test_position_rows_equal_a_gather_and_sum_the_gradient_over_the_batch(start):
    table = jax.random.normal(jax.random.key(0), (16, 4))
    positions = jnp.broadcast_to(start + jnp.arange(6)[None], (3, 6))
    rows = position_rows(table, positions)
    np.testing.assert_array_equal(jnp.broadcast_to(rows, (3, 6, 4)), table[positions])
    weights = jax.random.normal(jax.random.key(1), (3, 6, 4))
    got = jax.grad(lambda t: jnp.sum(position_rows(t, positions) * weights))(table)
    want = jax.grad(lambda t: jnp.sum(jnp.take(t, positions, axis=0) * weights))(table)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_cross_entropy_and_gradient_equal_optax_on_upcast_logits(dtype):
    logits = (4 * jax.random.normal(jax.random.key(0), (3, 5, 97))).astype(dtype)
    labels = jax.random.randint(jax.random.key(1), (3, 5), 0, 97)
    weights = jax.random.uniform(jax.random.key(2), (3, 5))

    def ours(x):
        return jnp.sum(token_cross_entropy(x, labels) * weights)

    def reference(x):
        upcast = x.astype(jnp.float32)
        return jnp.sum(optax.softmax_cross_entropy_with_integer_labels(upcast, labels) * weights)

    assert token_cross_entropy(logits, labels).dtype == jnp.float32
    np.testing.assert_allclose(ours(logits), reference(logits), rtol=1e-6)
    got, want = jax.grad(ours)(logits), jax.grad(reference)(logits)
    assert got.dtype == dtype
    tolerance = 1e-6 if dtype == jnp.float32 else 1e-2  # bf16 rounds the gradient itself
    np.testing.assert_allclose(
        np.asarray(got, np.float32), np.asarray(want, np.float32), atol=tolerance
    )
