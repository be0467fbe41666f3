"""An LSTM language model on Flax's `nn.OptimizedLSTMCell`, the recurrent baseline to attention.

The cell's kernels carry logical axis names (inputs `embed`, gates `mlp`), so the same mesh rules
shard it as the other models. `decode=True` carries each layer's (c, h) in the `cache` collection,
so generation costs O(1) memory per token at any length.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from models.layers import next_token_logits, partitioned, token_embedding


class LSTMLayer(nn.Module):
    """One LSTM layer over (batch, length, features), run with `nn.RNN` (a `lax.scan` in time)."""

    features: int
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, decode: bool = False) -> jax.Array:
        cell = nn.OptimizedLSTMCell(
            self.features,
            kernel_init=partitioned(nn.initializers.lecun_normal(), ("embed", "mlp")),
            recurrent_kernel_init=partitioned(nn.initializers.orthogonal(), (None, "mlp")),
            bias_init=partitioned(nn.initializers.zeros, ("mlp",)),
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="cell",
        )
        shape = (x.shape[0], self.features)
        if decode:  # continue from the carried state; the step form for generation
            initialized = self.has_variable("cache", "c")
            c = self.variable("cache", "c", jnp.zeros, shape, self.param_dtype)
            h = self.variable("cache", "h", jnp.zeros, shape, self.param_dtype)
            carry = (c.value, h.value)
        else:
            carry = (jnp.zeros(shape, self.param_dtype), jnp.zeros(shape, self.param_dtype))
        carry, y = nn.RNN(cell, return_carry=True, name="rnn")(x, initial_carry=carry)
        if decode and initialized:
            c.value, h.value = carry
        return nn.with_logical_constraint(y, ("batch", "length", "mlp"))


class LSTMLM(nn.Module):
    """Embedding -> stacked LSTM layers (dropout between them) -> LayerNorm -> head (tied by
    default). Tokens (batch, length) -> next-token logits, the same call as `DecoderLM`.

    Every layer is `emb_dim` wide, so the tied head needs no projection.
    """

    vocab_size: int
    num_layers: int
    emb_dim: int
    dropout: float = 0.0
    tie_embeddings: bool = True
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(
        self, tokens: jax.Array, deterministic: bool = True, decode: bool = False
    ) -> jax.Array:
        embed = token_embedding(self.vocab_size, self.emb_dim, self.dtype, self.param_dtype)
        x = nn.Dropout(self.dropout)(embed(tokens), deterministic=deterministic)
        for layer in range(self.num_layers):
            x = LSTMLayer(
                self.emb_dim, dtype=self.dtype, param_dtype=self.param_dtype, name=f"lstm_{layer}"
            )(x, decode=decode)
            x = nn.Dropout(self.dropout)(x, deterministic=deterministic)
        return next_token_logits(x, embed, self.tie_embeddings, False, self.dtype, self.param_dtype)
