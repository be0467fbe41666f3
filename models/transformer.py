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
    next_token_logits,
    norm_layer,
    normal,
    partitioned,
    position_rows,
    remat_block,
    sinusoidal_table,
    token_embedding,
)

POS_ENCODINGS = ("learned", "sinusoidal", "rope")


class DecoderBlock(nn.Module):
    """Pre-norm block: x + attn(norm(x)), then x + mlp(norm(x)); `norm` is LayerNorm or RMSNorm."""

    num_heads: int
    mlp_dim: int
    max_len: int
    dropout: float
    use_rope: bool
    use_bias: bool
    activation: str
    out_init_std: float
    attention_impl: str
    dtype: Any
    param_dtype: Any
    num_kv_heads: int = 0
    rope_theta: float = 10_000.0
    norm: str = "layernorm"
    mlp_kind: str = "plain"

    @nn.compact
    def __call__(
        self, x: jax.Array, positions: jax.Array, deterministic: bool, decode: bool
    ) -> jax.Array:
        norm = (self.norm, self.use_bias, self.dtype, self.param_dtype)
        h = norm_layer(*norm, "ln_attn")(x)
        x = x + MultiHeadAttention(
            num_heads=self.num_heads,
            max_len=self.max_len,
            num_kv_heads=self.num_kv_heads,
            dropout=self.dropout,
            use_rope=self.use_rope,
            rope_theta=self.rope_theta,
            use_bias=self.use_bias,
            out_init_std=self.out_init_std,
            attention_impl=self.attention_impl,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="attn",
        )(h, positions, deterministic=deterministic, decode=decode)
        h = norm_layer(*norm, "ln_mlp")(x)
        x = x + MLP(
            hidden_dim=self.mlp_dim,
            activation=self.activation,
            kind=self.mlp_kind,
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
    `attention_impl` picks the attention kernel (models/layers.py ATTENTION_IMPLS) and `remat`
    what each block keeps for the backward pass (REMAT_POLICIES).

    The defaults are GPT-2's block. A Llama-style decoder is options of the same model:
    `norm="rmsnorm"`, `mlp="swiglu"`, `pos_encoding="rope"` with `rope_theta` (Llama 3: 500,000),
    `num_kv_heads` below `num_heads` (grouped-query attention), `use_bias=False` and
    `tie_embeddings=False` (or True, as Llama 3.2 1B/3B tie them).
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
    attention_impl: str = "auto"
    remat: str = "none"
    num_kv_heads: int = 0  # 0: num_heads (multi-head attention); fewer: grouped-query attention
    rope_theta: float = 10_000.0  # RoPE's max timescale (pos_encoding="rope" only)
    norm: str = "layernorm"  # layernorm | rmsnorm (models/layers.py NORMS)
    mlp: str = "plain"  # plain | swiglu (models/layers.py MLP_KINDS)
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(
        self, tokens: jax.Array, deterministic: bool = True, decode: bool = False
    ) -> jax.Array:
        batch, length = tokens.shape
        positions = self._positions(batch, length, decode)
        embed = token_embedding(self.vocab_size, self.emb_dim, self.dtype, self.param_dtype)
        x = embed(tokens)
        if self.pos_encoding == "learned":
            table = self.param(
                "pos_embed",
                partitioned(normal(), (None, "embed")),
                (self.max_len, self.emb_dim),
                self.param_dtype,
            )
            x = x + position_rows(table, positions).astype(self.dtype)
        elif self.pos_encoding == "sinusoidal":
            table = jnp.asarray(sinusoidal_table(self.max_len, self.emb_dim))
            x = x + position_rows(table, positions).astype(self.dtype)
        x = nn.Dropout(self.dropout)(x, deterministic=deterministic)
        x = nn.with_logical_constraint(x, ("batch", "length", "embed"))

        out_init_std = 0.02 / math.sqrt(2 * self.num_layers)  # GPT-2's scaled residual init
        block = remat_block(DecoderBlock, self.remat, static_argnums=(3, 4))
        for layer in range(self.num_layers):
            x = block(
                num_heads=self.num_heads,
                mlp_dim=self.mlp_dim,
                max_len=self.max_len,
                dropout=self.dropout,
                use_rope=self.pos_encoding == "rope",
                use_bias=self.use_bias,
                activation=self.activation,
                out_init_std=out_init_std,
                attention_impl=self.attention_impl,
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                num_kv_heads=self.num_kv_heads,
                rope_theta=self.rope_theta,
                norm=self.norm,
                mlp_kind=self.mlp,
                name=f"block_{layer}",
            )(x, positions, deterministic, decode)
        return next_token_logits(
            x, embed, self.tie_embeddings, self.use_bias, self.dtype, self.param_dtype, self.norm
        )

    def _positions(self, batch: int, length: int, decode: bool) -> jax.Array:
        return cached_positions(self, batch, length, decode)


def cached_positions(module: nn.Module, batch: int, length: int, decode: bool) -> jax.Array:
    """Absolute positions of this call's tokens; in decode mode they continue the cache (a
    `position` counter in `module`'s cache collection). Call from a compact method."""
    start = jnp.zeros((), jnp.int32)
    if decode:
        initialized = module.has_variable("cache", "position")
        position = module.variable("cache", "position", lambda: jnp.zeros((), jnp.int32))
        start = position.value
        if initialized:
            position.value = start + length
    return jnp.broadcast_to(start + jnp.arange(length)[None, :], (batch, length))


# -- encoder-decoder (Vaswani et al. 2017) ---------------------------------------------------------

SEQ2SEQ_POS_ENCODINGS = ("sinusoidal", "learned")


def _sublayer(x: jax.Array, layer: Any, norm: LayerNorm, pre_norm: bool) -> jax.Array:
    """Pre-LN `x + f(LN(x))` (stable without long warm-up) or the paper's post-LN `LN(x + f(x))`."""
    if pre_norm:
        return x + layer(norm(x))
    return norm(x + layer(x))


def segment_mask(query_segments: jax.Array, key_segments: jax.Array) -> jax.Array:
    """(batch, 1, query, key) True where a query may see a key: same segment, key not padding.

    Segment ids number the sequences packed into a row from 1; 0 marks padding. An unpacked row
    is segment 1 followed by padding.
    """
    same = query_segments[:, None, :, None] == key_segments[:, None, None, :]
    return jnp.logical_and(same, key_segments[:, None, None, :] > 0)


class Seq2SeqBlock(nn.Module):
    """An encoder block (bidirectional self-attention, MLP) or, with `causal` and `cross`, a
    decoder block (causal self-attention, cross-attention to the encoder output, MLP); pre- or
    post-LN."""

    num_heads: int
    mlp_dim: int
    max_len: int
    dropout: float
    attention_dropout: float
    pre_norm: bool
    use_bias: bool
    activation: str
    out_init_std: float
    dtype: Any
    param_dtype: Any
    causal: bool = False  # self-attention sees no later position
    cross: bool = False  # cross-attention to `encoded` after the self-attention

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        positions: jax.Array,
        self_mask: jax.Array | None,
        deterministic: bool,
        decode: bool = False,
        encoded: jax.Array | None = None,
        cross_mask: jax.Array | None = None,
    ) -> jax.Array:
        common = dict(use_bias=self.use_bias, dtype=self.dtype, param_dtype=self.param_dtype)
        attention = dict(
            num_heads=self.num_heads,
            max_len=self.max_len,
            dropout=self.dropout,
            attention_dropout=self.attention_dropout,
            out_init_std=self.out_init_std,
            **common,
        )
        self_attention = MultiHeadAttention(causal=self.causal, name="attn", **attention)

        def attend(h: jax.Array) -> jax.Array:
            return self_attention(
                h, positions, deterministic=deterministic, decode=decode, mask=self_mask
            )

        x = _sublayer(x, attend, LayerNorm(name="ln_attn", **common), self.pre_norm)
        if self.cross:
            cross_attention = MultiHeadAttention(
                causal=False, cross=True, name="cross", **attention
            )

            def attend_source(h: jax.Array) -> jax.Array:
                return cross_attention(
                    h,
                    positions,
                    deterministic=deterministic,
                    decode=decode,
                    mask=cross_mask,
                    inputs_kv=encoded,
                )

            x = _sublayer(x, attend_source, LayerNorm(name="ln_cross", **common), self.pre_norm)
        mlp = MLP(
            hidden_dim=self.mlp_dim,
            activation=self.activation,
            dropout=self.dropout,
            out_init_std=self.out_init_std,
            name="mlp",
            **common,
        )
        x = _sublayer(
            x,
            lambda h: mlp(h, deterministic=deterministic),
            LayerNorm(name="ln_mlp", **common),
            self.pre_norm,
        )
        return nn.with_logical_constraint(x, ("batch", "length", "embed"))


class _Stack(nn.Module):
    """Position encodings, a stack of `Seq2SeqBlock`s and (pre-LN) a final LayerNorm."""

    num_layers: int
    num_heads: int
    mlp_dim: int
    max_len: int
    dropout: float
    attention_dropout: float
    pos_encoding: str
    pre_norm: bool
    use_bias: bool
    activation: str
    dtype: Any
    param_dtype: Any

    def _embed_positions(
        self, x: jax.Array, positions: jax.Array, deterministic: bool
    ) -> jax.Array:
        width = x.shape[-1]
        if self.pos_encoding == "learned":
            table = self.param(
                "pos_embed",
                partitioned(normal(), (None, "embed")),
                (self.max_len, width),
                self.param_dtype,
            )
        else:
            table = jnp.asarray(sinusoidal_table(self.max_len, width))
        x = x + jnp.take(table, positions, axis=0).astype(self.dtype)
        x = nn.Dropout(self.dropout)(x, deterministic=deterministic)
        return nn.with_logical_constraint(x, ("batch", "length", "embed"))

    def _block(self, index: int, causal: bool, cross: bool) -> Seq2SeqBlock:
        # GPT-2's scaled residual init for pre-LN stacks; post-LN renormalises every sublayer.
        out_init_std = 0.02 / math.sqrt(2 * self.num_layers) if self.pre_norm else 0.02
        return Seq2SeqBlock(
            num_heads=self.num_heads,
            mlp_dim=self.mlp_dim,
            max_len=self.max_len,
            dropout=self.dropout,
            attention_dropout=self.attention_dropout,
            pre_norm=self.pre_norm,
            use_bias=self.use_bias,
            activation=self.activation,
            out_init_std=out_init_std,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            causal=causal,
            cross=cross,
            name=f"block_{index}",
        )

    def _final_norm(self, x: jax.Array) -> jax.Array:
        if self.pre_norm:  # post-LN outputs are normalised already
            x = LayerNorm(
                use_bias=self.use_bias,
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                name="ln_final",
            )(x)
        return nn.with_logical_constraint(x, ("batch", "length", "embed"))


class Encoder(_Stack):
    """Bidirectional self-attention over embedded source tokens; padding is never attended to."""

    @nn.compact
    def __call__(
        self, x: jax.Array, segments: jax.Array, positions: jax.Array, deterministic: bool
    ) -> jax.Array:
        x = self._embed_positions(x, positions, deterministic)
        mask = segment_mask(segments, segments)
        for index in range(self.num_layers):
            x = self._block(index, causal=False, cross=False)(x, positions, mask, deterministic)
        return self._final_norm(x)


class Decoder(_Stack):
    """Causal self-attention, cross-attention to the encoder output, MLP; KV-cached in decode
    mode (the cross-attention's keys/values computed once, by the call that passes `encoded`)."""

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        encoded: jax.Array | None,
        source_segments: jax.Array,
        segments: jax.Array | None,
        positions: jax.Array | None,
        deterministic: bool,
        decode: bool,
    ) -> jax.Array:
        batch, length = x.shape[:2]
        if decode:  # one sequence per row: causality comes from the cache, padding from the source
            positions = cached_positions(self, batch, length, True)
            self_mask = None
            cross_mask = (source_segments > 0)[:, None, None, :]
        else:
            if positions is None:
                positions = jnp.broadcast_to(jnp.arange(length)[None, :], (batch, length))
            if segments is None:
                segments = jnp.ones((batch, length), jnp.int32)
            self_mask = segment_mask(segments, segments)
            cross_mask = segment_mask(segments, source_segments)
        x = self._embed_positions(x, positions, deterministic)
        for index in range(self.num_layers):
            x = self._block(index, causal=True, cross=True)(
                x, positions, self_mask, deterministic, decode, encoded, cross_mask
            )
        return self._final_norm(x)


class EncoderDecoder(nn.Module):
    """Encoder-decoder Transformer returning next-target-token logits (float32).

    Token embeddings are scaled by sqrt(emb_dim) (init std emb_dim^-1/2, as in the paper);
    `share_embeddings` uses one table for source and target (a joint vocabulary), `tie_output`
    reuses the target table as the output projection. Packed rows pass segment ids and
    positions; without them a row is one sequence whose `pad_id` tokens are padding.
    `encode` + `decode(..., decode=True)` decode incrementally against the KV caches.
    """

    vocab_size: int
    num_encoder_layers: int
    num_decoder_layers: int
    num_heads: int
    emb_dim: int
    mlp_dim: int
    max_len: int  # longest source or target sequence: position tables and the decoder cache
    dropout: float = 0.0  # on embeddings and every sublayer's output (the paper's P_drop)
    attention_dropout: float = 0.0  # on attention weights (the paper has none)
    pos_encoding: str = "sinusoidal"
    share_embeddings: bool = True
    tie_output: bool = True
    pre_norm: bool = True
    use_bias: bool = False
    activation: str = "relu"
    pad_id: int = 0
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def setup(self) -> None:
        """The embedding table(s), both stacks and (untied) the output projection, as
        submodules, so that `encode` and `decode` can also be called on their own."""
        if self.pos_encoding not in SEQ2SEQ_POS_ENCODINGS:
            raise ValueError(f"pos_encoding {self.pos_encoding!r} not in {SEQ2SEQ_POS_ENCODINGS}")
        self.source_embed = self._embedding()
        if not self.share_embeddings:
            self.target_embed = self._embedding()
        stack = dict(
            num_heads=self.num_heads,
            mlp_dim=self.mlp_dim,
            max_len=self.max_len,
            dropout=self.dropout,
            attention_dropout=self.attention_dropout,
            pos_encoding=self.pos_encoding,
            pre_norm=self.pre_norm,
            use_bias=self.use_bias,
            activation=self.activation,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
        )
        self.encoder = Encoder(num_layers=self.num_encoder_layers, **stack)
        self.decoder = Decoder(num_layers=self.num_decoder_layers, **stack)
        if not self.tie_output:
            self.head = Dense(
                self.vocab_size,
                ("embed", "vocab"),
                dtype=self.dtype,
                param_dtype=self.param_dtype,
            )

    def _embedding(self) -> nn.Embed:
        return nn.Embed(
            self.vocab_size,
            self.emb_dim,
            embedding_init=partitioned(normal(self.emb_dim**-0.5), ("vocab", "embed")),
            dtype=self.dtype,
            param_dtype=self.param_dtype,
        )

    def _target_table(self) -> nn.Embed:
        return self.source_embed if self.share_embeddings else self.target_embed

    def __call__(
        self,
        source: jax.Array,
        target_in: jax.Array,
        source_segments: jax.Array | None = None,
        target_segments: jax.Array | None = None,
        source_positions: jax.Array | None = None,
        target_positions: jax.Array | None = None,
        deterministic: bool = True,
    ) -> jax.Array:
        if source_segments is None:
            source_segments = self.padding_segments(source)
        encoded = self.encode(source, source_segments, source_positions, deterministic)
        return self.decode(
            target_in,
            encoded,
            source_segments,
            target_segments,
            target_positions,
            deterministic=deterministic,
        )

    def padding_segments(self, tokens: jax.Array) -> jax.Array:
        """Segment ids of unpacked rows: 1 for tokens, 0 for padding."""
        return (tokens != self.pad_id).astype(jnp.int32)

    def encode(
        self,
        source: jax.Array,
        segments: jax.Array | None = None,
        positions: jax.Array | None = None,
        deterministic: bool = True,
    ) -> jax.Array:
        """Encoder output (batch, source length, emb_dim)."""
        if segments is None:
            segments = self.padding_segments(source)
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(source.shape[1])[None, :], source.shape)
        x = self.source_embed(source) * jnp.asarray(math.sqrt(self.emb_dim), self.dtype)
        return self.encoder(x, segments, positions, deterministic)

    def decode(
        self,
        target_in: jax.Array,
        encoded: jax.Array | None,
        source_segments: jax.Array,
        target_segments: jax.Array | None = None,
        target_positions: jax.Array | None = None,
        deterministic: bool = True,
        decode: bool = False,
    ) -> jax.Array:
        """Logits for the next target token at every position of `target_in`.

        With `decode=True` each call continues the cache; the first passes `encoded` (filling the
        cross-attention cache), later ones may pass None.
        """
        table = self._target_table()
        x = table(target_in) * jnp.asarray(math.sqrt(self.emb_dim), self.dtype)
        h = self.decoder(
            x,
            encoded,
            source_segments,
            target_segments,
            target_positions,
            deterministic,
            decode,
        )
        if self.tie_output:
            # Unscaled, as in the paper and fairseq. The residual stream still carries the input
            # token's embedding at init, so its logit starts near sqrt(emb_dim) and the first
            # losses lie above log(vocab) until the model unlearns copying (a few dozen steps);
            # scaling the logits down instead (T5) slows all later learning of this table.
            logits = matmul(h, table.embedding.T.astype(self.dtype))
        else:
            logits = self.head(h)
        logits = nn.with_logical_constraint(logits, ("batch", "length", "vocab"))
        return logits.astype(jnp.float32)
