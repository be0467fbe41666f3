"""Transformer models built from `models/layers.py`."""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from models.layers import (
    MLP,
    Dense,
    LayerNorm,
    MultiHeadAttention,
    matmul,
    normal,
    partitioned,
    sinusoidal_table,
)

POS_ENCODINGS = ("learned", "sinusoidal", "rope")


class DecoderBlock(nn.Module):
    """Pre-LayerNorm block: x + attn(LN(x)), then x + mlp(LN(x))."""

    num_heads: int
    mlp_dim: int
    max_len: int
    dropout: float
    use_rope: bool
    use_bias: bool
    activation: str
    out_init_std: float
    dtype: Any
    param_dtype: Any

    @nn.compact
    def __call__(
        self, x: jax.Array, positions: jax.Array, deterministic: bool, decode: bool
    ) -> jax.Array:
        norm = dict(use_bias=self.use_bias, dtype=self.dtype, param_dtype=self.param_dtype)
        h = LayerNorm(name="ln_attn", **norm)(x)
        x = x + MultiHeadAttention(
            num_heads=self.num_heads,
            max_len=self.max_len,
            dropout=self.dropout,
            use_rope=self.use_rope,
            use_bias=self.use_bias,
            out_init_std=self.out_init_std,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="attn",
        )(h, positions, deterministic=deterministic, decode=decode)
        h = LayerNorm(name="ln_mlp", **norm)(x)
        x = x + MLP(
            hidden_dim=self.mlp_dim,
            activation=self.activation,
            dropout=self.dropout,
            use_bias=self.use_bias,
            out_init_std=self.out_init_std,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="mlp",
        )(h, deterministic=deterministic)
        return nn.with_logical_constraint(x, ("batch", "length", "embed"))


class DecoderLM(nn.Module):
    """Decoder-only (GPT-style) language model returning next-token logits.

    `decode=True` runs incrementally against a KV cache (collection `cache`): each call continues
    from where the previous one stopped, so a prompt can be fed whole and then one token at a time.
    """

    vocab_size: int
    num_layers: int
    num_heads: int
    emb_dim: int
    mlp_dim: int
    max_len: int
    dropout: float = 0.0
    pos_encoding: str = "learned"
    tie_embeddings: bool = True
    use_bias: bool = False
    activation: str = "gelu_tanh"
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(
        self, tokens: jax.Array, deterministic: bool = True, decode: bool = False
    ) -> jax.Array:
        batch, length = tokens.shape
        positions = self._positions(batch, length, decode)
        embed = nn.Embed(
            self.vocab_size,
            self.emb_dim,
            embedding_init=partitioned(normal(), ("vocab", "embed")),
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="token_embed",
        )
        x = embed(tokens)
        if self.pos_encoding == "learned":
            table = self.param(
                "pos_embed",
                partitioned(normal(), (None, "embed")),
                (self.max_len, self.emb_dim),
                self.param_dtype,
            )
            x = x + jnp.take(table, positions, axis=0).astype(self.dtype)
        elif self.pos_encoding == "sinusoidal":
            table = jnp.asarray(sinusoidal_table(self.max_len, self.emb_dim))
            x = x + jnp.take(table, positions, axis=0).astype(self.dtype)
        x = nn.Dropout(self.dropout)(x, deterministic=deterministic)
        x = nn.with_logical_constraint(x, ("batch", "length", "embed"))

        out_init_std = 0.02 / math.sqrt(2 * self.num_layers)  # GPT-2's scaled residual init
        for layer in range(self.num_layers):
            x = DecoderBlock(
                num_heads=self.num_heads,
                mlp_dim=self.mlp_dim,
                max_len=self.max_len,
                dropout=self.dropout,
                use_rope=self.pos_encoding == "rope",
                use_bias=self.use_bias,
                activation=self.activation,
                out_init_std=out_init_std,
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                name=f"block_{layer}",
            )(x, positions, deterministic, decode)
        x = LayerNorm(
            use_bias=self.use_bias, dtype=self.dtype, param_dtype=self.param_dtype, name="ln_final"
        )(x)
        if self.tie_embeddings:
            logits = matmul(x, embed.embedding.T.astype(self.dtype))
        else:
            logits = Dense(
                self.vocab_size,
                ("embed", "vocab"),
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                name="head",
            )(x)
        logits = nn.with_logical_constraint(logits, ("batch", "length", "vocab"))
        return logits.astype(jnp.float32)

    def _positions(self, batch: int, length: int, decode: bool) -> jax.Array:
        """Absolute positions of this call's tokens; in decode mode they continue the cache."""
        start = jnp.zeros((), jnp.int32)
        if decode:
            initialized = self.has_variable("cache", "position")
            position = self.variable("cache", "position", lambda: jnp.zeros((), jnp.int32))
            start = position.value
            if initialized:
                position.value = start + length
        return jnp.broadcast_to(start + jnp.arange(length)[None, :], (batch, length))
