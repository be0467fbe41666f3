"""Building blocks shared by every Transformer-shaped model: attention, MLP, positional encodings.

Every parameter carries logical axis names (`embed`, `heads`, `kv`, `mlp`, `vocab`, ...), so the
same module runs data-parallel, FSDP or tensor-parallel depending only on the rules table that
`train/partitioning.py` picks from the config.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Dtype = Any
Initializer = Callable[..., jax.Array]

DEFAULT_INIT_STD = 0.02


@jax.custom_vjp
def _matmul_2d(x: jax.Array, w: jax.Array) -> jax.Array:
    return x @ w


def _matmul_2d_fwd(x: jax.Array, w: jax.Array):
    return x @ w, (x, w)


def _matmul_2d_bwd(saved, grad):
    x, w = saved
    if jax.default_backend() != "cpu":
        return grad @ w.T, x.T @ grad
    # XLA's CPU backend turns the weight gradient x^T @ grad into a slow transposing matmul that
    # also re-materialises the producer of the wide operand. Transposing the narrower operand
    # first (behind a barrier, so XLA cannot fold it back) makes it a plain row-major matmul:
    # about 20% off a whole GPT training step on 2 cores (benchmarks/README.md).
    if x.shape[1] <= grad.shape[1]:
        weight_grad = jax.lax.optimization_barrier(x.T) @ grad
    else:
        weight_grad = (jax.lax.optimization_barrier(grad.T) @ x).T
    return grad @ w.T, weight_grad


_matmul_2d.defvjp(_matmul_2d_fwd, _matmul_2d_bwd)


def matmul(x: jax.Array, w: jax.Array, in_dims: int = 1) -> jax.Array:
    """Contract the last `in_dims` axes of x with the first `in_dims` axes of w."""
    in_shape, out_shape = w.shape[:in_dims], w.shape[in_dims:]
    lead = x.shape[: x.ndim - in_dims]
    y = _matmul_2d(
        x.reshape(-1, math.prod(in_shape)), w.reshape(math.prod(in_shape), math.prod(out_shape))
    )
    return y.reshape(*lead, *out_shape)


def partitioned(init: Initializer, axes: tuple[str | None, ...]) -> Initializer:
    """An initializer whose parameter is annotated with logical axis names."""
    return nn.with_logical_partitioning(init, axes)


def normal(std: float = DEFAULT_INIT_STD) -> Initializer:
    return nn.initializers.normal(stddev=std)


ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "gelu_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
}


class LayerNorm(nn.Module):
    """LayerNorm whose scale and (optional) bias are named along `embed`."""

    use_bias: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return nn.LayerNorm(
            use_bias=self.use_bias,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            scale_init=partitioned(nn.initializers.ones, ("embed",)),
            bias_init=partitioned(nn.initializers.zeros, ("embed",)),
        )(x)


class Dense(nn.Module):
    """A linear layer over the last axis whose kernel carries logical axis names (via `matmul`)."""

    features: int
    axes: tuple[str | None, str | None]
    use_bias: bool = False
    init_std: float = DEFAULT_INIT_STD
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.param(
            "kernel",
            partitioned(normal(self.init_std), self.axes),
            (x.shape[-1], self.features),
            self.param_dtype,
        )
        y = matmul(x.astype(self.dtype), kernel.astype(self.dtype))
        if self.use_bias:
            bias = self.param(
                "bias",
                partitioned(nn.initializers.zeros, self.axes[1:]),
                (self.features,),
                self.param_dtype,
            )
            y = y + bias.astype(self.dtype)
        return y


class MLP(nn.Module):
    """Position-wise feed-forward block: Dense -> activation -> Dense -> dropout."""

    hidden_dim: int
    activation: str = "gelu_tanh"
    dropout: float = 0.0
    use_bias: bool = False
    out_init_std: float = DEFAULT_INIT_STD
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool = True) -> jax.Array:
        common = dict(use_bias=self.use_bias, dtype=self.dtype, param_dtype=self.param_dtype)
        h = Dense(self.hidden_dim, ("embed", "mlp"), name="wi", **common)(x)
        h = ACTIVATIONS[self.activation](h)
        h = nn.with_logical_constraint(h, ("batch", "length", "mlp"))
        out = Dense(x.shape[-1], ("mlp", "embed"), init_std=self.out_init_std, name="wo", **common)(
            h
        )
        return nn.Dropout(self.dropout)(out, deterministic=deterministic)


def sinusoidal_table(length: int, dim: int, max_timescale: float = 10_000.0) -> np.ndarray:
    """The fixed sin/cos position table of Vaswani et al. (2017), shape (length, dim)."""
    positions = np.arange(length)[:, None]
    freqs = np.exp(-np.log(max_timescale) * np.arange(0, dim, 2) / dim)[None, :]
    table = np.zeros((length, dim), np.float32)
    table[:, 0::2] = np.sin(positions * freqs)
    table[:, 1::2] = np.cos(positions * freqs)[:, : dim // 2]
    return table


def apply_rope(x: jax.Array, positions: jax.Array, max_timescale: float = 10_000.0) -> jax.Array:
    """Rotary position embedding (Su et al. 2021) on x of shape (batch, heads, length, head_dim)."""
    half = x.shape[-1] // 2
    freqs = max_timescale ** (-jnp.arange(half, dtype=jnp.float32) / half)
    angles = positions[:, None, :, None].astype(jnp.float32) * freqs  # (batch, 1, length, half)
    sin, cos = jnp.sin(angles), jnp.cos(angles)
    x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    rotated = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return rotated.astype(x.dtype)


class MultiHeadAttention(nn.Module):
    """Multi-head scaled-dot-product attention (causal self-attention by default), KV-cached.

    Computed heads-major, (batch, heads, length, head_dim), so the score and value products are
    plain batched matmuls. In decode mode the keys and values of every call are written into a
    cache of `max_len` positions (collection `cache`), and queries attend to every cached
    position up to their own. `causal=False` gives bidirectional attention (encoders, image
    patches); `mask` (True = may attend, broadcastable to (batch, heads, query, key)) further
    restricts it, e.g. to hide padding. `dropout` applies to the output and, unless
    `attention_dropout` is given, to the attention weights.

    `cross=True` makes it encoder-decoder attention: queries come from `x`, keys and values from
    `inputs_kv` (same width), through the same `qkv_kernel` (its query slice for `x`, its
    key/value slices for `inputs_kv`), never causal and without RoPE (the two sequences' positions
    are unrelated). In decode mode the keys/values are computed once, by the call that passes
    `inputs_kv`, and kept in the cache (`cross_key`, `cross_value`); later calls pass
    `inputs_kv=None` and reuse them.
    """

    num_heads: int
    max_len: int
    causal: bool = True
    cross: bool = False
    dropout: float = 0.0
    attention_dropout: float | None = None  # on the attention weights; None: `dropout`
    use_rope: bool = False
    use_bias: bool = False
    out_init_std: float = DEFAULT_INIT_STD
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        positions: jax.Array,
        deterministic: bool = True,
        decode: bool = False,
        mask: jax.Array | None = None,
        inputs_kv: jax.Array | None = None,
    ) -> jax.Array:
        length, width = x.shape[-2:]
        head_dim = width // self.num_heads
        qkv_kernel = self.param(
            "qkv_kernel",
            partitioned(normal(), ("embed", None, "heads", "kv")),
            (width, 3, self.num_heads, head_dim),
            self.param_dtype,
        )
        qkv_bias = None
        if self.use_bias:
            qkv_bias = self.param(
                "qkv_bias",
                partitioned(nn.initializers.zeros, (None, "heads", "kv")),
                (3, self.num_heads, head_dim),
                self.param_dtype,
            )
        if self.cross:
            query, key, value = self._cross_projections(x, inputs_kv, qkv_kernel, qkv_bias, decode)
            allowed = np.ones((length, key.shape[2]), dtype=bool)
            return self._attend(query, key, value, allowed, mask, width, deterministic)

        qkv = matmul(x.astype(self.dtype), qkv_kernel.astype(self.dtype))  # (b, t, 3, h, d)
        if qkv_bias is not None:
            qkv = qkv + qkv_bias.astype(self.dtype)
        query, key, value = qkv.transpose(2, 0, 3, 1, 4)  # each (b, h, t, d)
        if self.use_rope:
            query, key = apply_rope(query, positions), apply_rope(key, positions)

        if decode:
            key, value = self._update_cache(key, value)
            # Slot j of the cache holds position j, so `j <= query position` is causal and also
            # hides the slots not written yet.
            allowed = jnp.arange(self.max_len)[None, None, None, :] <= positions[:, None, :, None]
        elif self.causal:
            allowed = np.tril(np.ones((length, length), dtype=bool))  # positions are 0..length-1
        else:
            allowed = np.ones((length, length), dtype=bool)
        return self._attend(query, key, value, allowed, mask, width, deterministic)

    def _attend(
        self,
        query: jax.Array,
        key: jax.Array,
        value: jax.Array,
        allowed: Any,
        mask: jax.Array | None,
        width: int,
        deterministic: bool,
    ) -> jax.Array:
        """Softmax(q k^T / sqrt(d)) v over the allowed keys, then the output projection."""
        head_dim = query.shape[-1]
        if mask is not None:
            allowed = jnp.logical_and(allowed, mask)
        query = query / jnp.sqrt(head_dim).astype(self.dtype)
        scores = jnp.einsum("bhqd,bhkd->bhqk", query, key)
        scores = jnp.where(allowed, scores, jnp.finfo(self.dtype).min)
        weights = jax.nn.softmax(scores.astype(jnp.float32)).astype(self.dtype)
        rate = self.dropout if self.attention_dropout is None else self.attention_dropout
        weights = nn.Dropout(rate)(weights, deterministic=deterministic)
        out = jnp.einsum("bhqk,bhkd->bqhd", weights, value)
        out = nn.with_logical_constraint(out, ("batch", "length", "heads", "kv"))
        out_kernel = self.param(
            "out_kernel",
            partitioned(normal(self.out_init_std), ("heads", "kv", "embed")),
            (self.num_heads, head_dim, width),
            self.param_dtype,
        )
        out = matmul(out, out_kernel.astype(self.dtype), in_dims=2)
        if self.use_bias:
            out_bias = self.param(
                "out_bias",
                partitioned(nn.initializers.zeros, ("embed",)),
                (width,),
                self.param_dtype,
            )
            out = out + out_bias.astype(self.dtype)
        return nn.Dropout(self.dropout)(out, deterministic=deterministic)

    def _cross_projections(
        self,
        x: jax.Array,
        inputs_kv: jax.Array | None,
        qkv_kernel: jax.Array,
        qkv_bias: jax.Array | None,
        decode: bool,
    ) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Queries from `x`; keys/values from `inputs_kv`, or from the cache when decoding."""
        query = matmul(x.astype(self.dtype), qkv_kernel[:, 0].astype(self.dtype))  # (b, t, h, d)
        if qkv_bias is not None:
            query = query + qkv_bias[0].astype(self.dtype)
        query = query.transpose(0, 2, 1, 3)
        initialized = self.has_variable("cache", "cross_key")
        if inputs_kv is None:
            if not (decode and initialized):
                raise ValueError(
                    "cross-attention needs inputs_kv, except when decoding from a cache"
                )
            cache = self.variables["cache"]
            return query, cache["cross_key"], cache["cross_value"]
        if inputs_kv.shape[-1] != x.shape[-1]:
            raise ValueError(
                f"cross-attention: inputs_kv width {inputs_kv.shape[-1]} != {x.shape[-1]}"
            )
        kv = matmul(inputs_kv.astype(self.dtype), qkv_kernel[:, 1:].astype(self.dtype))
        if qkv_bias is not None:
            kv = kv + qkv_bias[1:].astype(self.dtype)
        key, value = kv.transpose(2, 0, 3, 1, 4)  # each (b, h, s, d)
        if decode:
            cached_key = self.variable("cache", "cross_key", jnp.zeros, key.shape, key.dtype)
            cached_value = self.variable("cache", "cross_value", jnp.zeros, value.shape, key.dtype)
            if initialized:
                cached_key.value, cached_value.value = key, value
        return query, key, value

    def _update_cache(self, key: jax.Array, value: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Write this call's keys/values at the cache index; return the whole cache."""
        batch, heads, length, head_dim = key.shape
        shape = (batch, heads, self.max_len, head_dim)
        initialized = self.has_variable("cache", "key")
        cached_key = self.variable("cache", "key", jnp.zeros, shape, key.dtype)
        cached_value = self.variable("cache", "value", jnp.zeros, shape, value.dtype)
        index = self.variable("cache", "index", lambda: jnp.zeros((), jnp.int32))
        if initialized:
            start = index.value
            cached_key.value = jax.lax.dynamic_update_slice(cached_key.value, key, (0, 0, start, 0))
            cached_value.value = jax.lax.dynamic_update_slice(
                cached_value.value, value, (0, 0, start, 0)
            )
            index.value = start + length
        return cached_key.value, cached_value.value


def token_embedding(vocab_size: int, width: int, dtype: Dtype, param_dtype: Dtype) -> nn.Embed:
    """The `token_embed` table of a language model (create it inside a compact module)."""
    return nn.Embed(
        vocab_size,
        width,
        embedding_init=partitioned(normal(), ("vocab", "embed")),
        dtype=dtype,
        param_dtype=param_dtype,
        name="token_embed",
    )


def next_token_logits(
    x: jax.Array,
    embed: nn.Embed,
    tie: bool,
    use_bias: bool = False,
    dtype: Dtype = jnp.float32,
    param_dtype: Dtype = jnp.float32,
) -> jax.Array:
    """A language model's last LayerNorm (`ln_final`) and output layer: the embedding table
    transposed when `tie`, else a `head` Dense; float32 logits. Call inside a compact module."""
    x = LayerNorm(use_bias=use_bias, dtype=dtype, param_dtype=param_dtype, name="ln_final")(x)
    if tie:
        logits = matmul(x.astype(dtype), embed.embedding.T.astype(dtype))
    else:
        logits = Dense(
            embed.num_embeddings,
            ("embed", "vocab"),
            dtype=dtype,
            param_dtype=param_dtype,
            name="head",
        )(x)
    logits = nn.with_logical_constraint(logits, ("batch", "length", "vocab"))
    return logits.astype(jnp.float32)
