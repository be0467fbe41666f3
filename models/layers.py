"""Building blocks shared by every Transformer-shaped model: attention, MLP, positional encodings.

Every parameter carries logical axis names (`embed`, `heads`, `kv`, `mlp`, `vocab`, ...), so the
same module runs data-parallel, FSDP or tensor-parallel depending only on the rules table that
`train/partitioning.py` picks from the config.
"""

from __future__ import annotations

import functools
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
    """Contract the last `in_dims` axes of x with the first `in_dims` axes of w.

    On CPU through the custom-VJP 2-D product above; elsewhere a plain dot, so that XLA's GPU/TPU
    fusion and remat policies see an ordinary `dot_general`.
    """
    if jax.default_backend() != "cpu":
        return jax.lax.dot_general(
            x, w, ((tuple(range(x.ndim - in_dims, x.ndim)), tuple(range(in_dims))), ((), ()))
        )
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
    """Rotary position embedding (Su et al. 2021) on x of shape (batch, length, heads, head_dim)."""
    half = x.shape[-1] // 2
    freqs = max_timescale ** (-jnp.arange(half, dtype=jnp.float32) / half)
    angles = positions[:, :, None, None].astype(jnp.float32) * freqs  # (batch, length, 1, half)
    sin, cos = jnp.sin(angles), jnp.cos(angles)
    x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    rotated = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return rotated.astype(x.dtype)


# How attention is computed (`model.attention_impl`):
#   auto       cudnn where it applies (a GPU, bf16/fp16, head_dim a multiple of 8 up to 128, not
#              one-token decoding), else xla
#   xla        jax.nn.dot_product_attention's XLA implementation
#   cudnn      jax.nn.dot_product_attention's cuDNN flash attention (GPU, bf16/fp16 only)
#   reference  the plain einsum/softmax/einsum below, kept for tests and as the one path that
#              applies dropout to the attention weights
# The fused paths (auto, xla, cudnn) apply no dropout to the attention weights: jax's cuDNN call
# takes its dropout seed as a compile-time constant, which would repeat one mask every step.
# Dropout on the attention output, the MLP output and the embeddings applies on every path.
ATTENTION_IMPLS = ("auto", "xla", "cudnn", "reference")
CUDNN_DTYPES = (jnp.bfloat16, jnp.float16)


def cudnn_supports(dtype: Dtype, head_dim: int) -> bool:
    """Whether cuDNN flash attention takes these inputs on this backend."""
    return (
        jax.default_backend() == "gpu"
        and jnp.dtype(dtype) in [jnp.dtype(d) for d in CUDNN_DTYPES]
        and head_dim % 8 == 0
        and head_dim <= 128
    )


def resolve_attention_impl(impl: str, dtype: Dtype, head_dim: int, decode: bool = False) -> str:
    """The implementation `impl` stands for here: `auto` becomes cudnn or xla; one-query-at-a-time
    decoding against a KV cache runs xla instead of cudnn (a flash kernel gains nothing there)."""
    if impl not in ATTENTION_IMPLS:
        raise ValueError(f"attention_impl={impl!r} is unknown; allowed: {ATTENTION_IMPLS}")
    if impl == "auto":
        return "cudnn" if cudnn_supports(dtype, head_dim) and not decode else "xla"
    if impl == "cudnn" and decode:
        return "xla"
    return impl


def dot_product_attention(
    query: jax.Array,
    key: jax.Array,
    value: jax.Array,
    impl: str,
    causal: bool,
    mask: jax.Array | None,
    dropout: Callable[[jax.Array], jax.Array] | None = None,
) -> jax.Array:
    """softmax(q k^T / sqrt(d)) v over the allowed keys, on (batch, length, heads, head_dim)
    arrays. `impl` is resolved already (xla | cudnn | reference); `mask` (True = may attend) is
    broadcastable to (batch, heads, query, key); `dropout` (reference only) acts on the weights.
    `causal` counts query i as position i of the keys (no cache offset)."""
    if impl == "cudnn" and mask is not None:  # cuDNN takes it as a bias of full (query, key) size
        batch, heads = mask.shape[0], mask.shape[1]
        mask = jnp.broadcast_to(mask, (batch, heads, query.shape[1], key.shape[1]))
    if impl != "reference":
        return jax.nn.dot_product_attention(
            query, key, value, mask=mask, is_causal=causal, implementation=impl
        )
    length, keys = query.shape[1], key.shape[1]
    allowed = np.tril(np.ones((length, keys), dtype=bool)) if causal else None
    if mask is not None:
        allowed = mask if allowed is None else jnp.logical_and(allowed, mask)
    query = query / jnp.sqrt(query.shape[-1]).astype(query.dtype)
    scores = jnp.einsum("bqhd,bkhd->bhqk", query, key)
    if allowed is not None:
        scores = jnp.where(allowed, scores, jnp.finfo(scores.dtype).min)
    weights = jax.nn.softmax(scores.astype(jnp.float32)).astype(query.dtype)
    if dropout is not None:
        weights = dropout(weights)
    return jnp.einsum("bhqk,bkhd->bqhd", weights, value)


class MultiHeadAttention(nn.Module):
    """Multi-head scaled-dot-product attention (causal self-attention by default), KV-cached.

    Queries, keys and values are (batch, length, heads, head_dim), the layout cuDNN's flash
    attention reads without transposes; `attention_impl` says how the product is computed (see
    ATTENTION_IMPLS above). In decode mode the keys and values of every call are written into a
    cache of `max_len` positions (collection `cache`), and queries attend to every cached
    position up to their own. `causal=False` gives bidirectional attention (encoders, image
    patches); `mask` (True = may attend, broadcastable to (batch, heads, query, key)) further
    restricts it, e.g. to hide padding. `dropout` applies to the output and, on the `reference`
    path only, to the attention weights unless `attention_dropout` is given.

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
    attention_impl: str = "auto"
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
        width = x.shape[-1]
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
            return self._attend(query, key, value, False, mask, width, deterministic, decode)

        qkv = matmul(x.astype(self.dtype), qkv_kernel.astype(self.dtype))  # (b, t, 3, h, d)
        if qkv_bias is not None:
            qkv = qkv + qkv_bias.astype(self.dtype)
        query, key, value = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # each (b, t, h, d)
        if self.use_rope:
            query, key = apply_rope(query, positions), apply_rope(key, positions)
        if not decode:
            return self._attend(query, key, value, self.causal, mask, width, deterministic, False)
        key, value = self._update_cache(key, value)
        # Slot j of the cache holds position j, so `j <= query position` is causal and also hides
        # the slots not written yet.
        allowed = jnp.arange(self.max_len)[None, None, None, :] <= positions[:, None, :, None]
        if mask is not None:
            allowed = jnp.logical_and(allowed, mask)
        return self._attend(query, key, value, False, allowed, width, deterministic, True)

    def _attend(
        self,
        query: jax.Array,
        key: jax.Array,
        value: jax.Array,
        causal: bool,
        mask: jax.Array | None,
        width: int,
        deterministic: bool,
        decode: bool,
    ) -> jax.Array:
        """The attention product (see `dot_product_attention`), then the output projection."""
        head_dim = query.shape[-1]
        impl = resolve_attention_impl(self.attention_impl, query.dtype, head_dim, decode)
        rate = self.dropout if self.attention_dropout is None else self.attention_dropout
        dropout = None
        if impl == "reference" and rate > 0 and not deterministic:
            dropout = functools.partial(nn.Dropout(rate), deterministic=False)
        out = dot_product_attention(query, key, value, impl, causal, mask, dropout)
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
        key, value = kv[:, :, 0], kv[:, :, 1]  # each (b, s, h, d)
        if decode:
            cached_key = self.variable("cache", "cross_key", jnp.zeros, key.shape, key.dtype)
            cached_value = self.variable("cache", "cross_value", jnp.zeros, value.shape, key.dtype)
            if initialized:
                cached_key.value, cached_value.value = key, value
        return query, key, value

    def _update_cache(self, key: jax.Array, value: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Write this call's keys/values at the cache index; return the whole cache."""
        batch, length, heads, head_dim = key.shape
        shape = (batch, self.max_len, heads, head_dim)
        initialized = self.has_variable("cache", "key")
        cached_key = self.variable("cache", "key", jnp.zeros, shape, key.dtype)
        cached_value = self.variable("cache", "value", jnp.zeros, shape, value.dtype)
        index = self.variable("cache", "index", lambda: jnp.zeros((), jnp.int32))
        if initialized:
            start = index.value
            cached_key.value = jax.lax.dynamic_update_slice(cached_key.value, key, (0, start, 0, 0))
            cached_value.value = jax.lax.dynamic_update_slice(
                cached_value.value, value, (0, start, 0, 0)
            )
            index.value = start + length
        return cached_key.value, cached_value.value


# What a rematerialised block keeps for the backward pass (`model.remat`, MaxText's knob):
#   none       everything (no remat; the fastest when memory allows)
#   full       nothing: the whole block is recomputed in the backward pass (least memory)
#   save_dots  the weight products' outputs; the cheap element-wise ops and attention recompute
REMAT_POLICIES: dict[str, Callable[..., Any] | None] = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "save_dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def remat_block(block: type[nn.Module], policy: str, static_argnums: tuple[int, ...]) -> Any:
    """`block` rematerialised as `policy` names (REMAT_POLICIES); itself for `none`. Parameter
    names and shapes are unchanged, so checkpoints move freely between policies.
    `static_argnums` count `self` as 0."""
    if policy not in REMAT_POLICIES:
        raise ValueError(f"remat={policy!r} is unknown; allowed: {tuple(REMAT_POLICIES)}")
    if policy == "none":
        return block
    return nn.remat(block, policy=REMAT_POLICIES[policy], static_argnums=static_argnums)


# Below this many entries a token table is read as a one-hot matmul. A gather's gradient is a
# scatter-add, and with few rows most of the batch's tokens collide on the same rows: on an H200
# that scatter took 34.6 of the 40.0 ms of a step of the Shakespeare `gpu` recipe (65
# characters, 16,384 tokens). The matmul costs 6 V d FLOPs per token, under 1% of such models.
ONE_HOT_MAX_VOCAB = 512


class TokenEmbed(nn.Embed):
    """nn.Embed whose lookup is a one-hot matmul for small vocabularies (ONE_HOT_MAX_VOCAB):
    the same numbers, a matmul instead of a colliding scatter in the backward pass."""

    def __call__(self, inputs: jax.Array) -> jax.Array:
        if self.num_embeddings > ONE_HOT_MAX_VOCAB:
            return super().__call__(inputs)
        table = jnp.asarray(self.embedding, self.dtype)
        one_hot = jax.nn.one_hot(inputs, self.num_embeddings, dtype=table.dtype)
        return jnp.matmul(one_hot, table, precision=jax.lax.Precision.HIGHEST)


def token_embedding(vocab_size: int, width: int, dtype: Dtype, param_dtype: Dtype) -> nn.Embed:
    """The `token_embed` table of a language model (create it inside a compact module)."""
    return TokenEmbed(
        vocab_size,
        width,
        embedding_init=partitioned(normal(), ("vocab", "embed")),
        dtype=dtype,
        param_dtype=param_dtype,
        name="token_embed",
    )


def position_rows(table: jax.Array, positions: jax.Array) -> jax.Array:
    """Rows of a position table for `positions` (batch, length) that run start..start+length-1
    in every row, as a language model's do: one slice, broadcast over the batch, so that the
    gradient is a sum over the batch rather than a scatter-add. (1, length, width)."""
    return jax.lax.dynamic_slice_in_dim(table, positions[0, 0], positions.shape[1])[None]


def next_token_logits(
    x: jax.Array,
    embed: nn.Embed,
    tie: bool,
    use_bias: bool = False,
    dtype: Dtype = jnp.float32,
    param_dtype: Dtype = jnp.float32,
) -> jax.Array:
    """A language model's last LayerNorm (`ln_final`) and output layer: the embedding table
    transposed when `tie`, else a `head` Dense. Logits come in the compute dtype: a float32 copy
    of a (tokens x vocabulary) array costs more than the loss itself, so consumers upcast inside
    their reductions (train/losses.py). Call inside a compact module."""
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
    return nn.with_logical_constraint(logits, ("batch", "length", "vocab"))
