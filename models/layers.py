"""Building blocks shared by every Transformer-shaped model: attention, MLP, positional encodings.

Every parameter carries logical axis names (`embed`, `heads`, `kv`, `mlp`, `vocab`, ...), so the
same module runs data-parallel, FSDP or tensor-parallel depending only on the rules table that
`train/partitioning.py` picks from the config.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import math
from collections.abc import Callable, Iterator
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Dtype = Any
Initializer = Callable[..., jax.Array]

DEFAULT_INIT_STD = 0.02

# The platform the traced program will run on: this process's backend, except while
# `genlab plan` traces for a machine it does not have (a TPU slice, from this CPU).
_TARGET_PLATFORM: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "target_platform", default=None
)


def target_platform() -> str:
    """'cpu', 'gpu' or 'tpu': what the code being traced is compiled for."""
    return _TARGET_PLATFORM.get() or jax.default_backend()


@contextlib.contextmanager
def compiling_for(platform: str) -> Iterator[None]:
    """Trace as if on `platform`, so platform-specific choices (the CPU matmul below, cuDNN
    attention) follow the target rather than the host."""
    token = _TARGET_PLATFORM.set(platform)
    try:
        yield
    finally:
        _TARGET_PLATFORM.reset(token)


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
    if target_platform() != "cpu":
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


class RMSNorm(nn.Module):
    """RMSNorm (Zhang & Sennrich 2019), Llama's norm, whose scale is named along `embed`: x over
    the root mean square of its channels, times a scale; no mean subtraction and no bias."""

    epsilon: float = 1e-5  # Llama's rms_norm_eps
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return nn.RMSNorm(
            epsilon=self.epsilon,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            scale_init=partitioned(nn.initializers.ones, ("embed",)),
        )(x)


NORMS = ("layernorm", "rmsnorm")


def norm_layer(
    kind: str, use_bias: bool, dtype: Dtype, param_dtype: Dtype, name: str
) -> LayerNorm | RMSNorm:
    """The block norm `kind` names (NORMS); RMSNorm has no bias, so `use_bias` is LayerNorm's only.
    Either keeps the caller's `name` (`ln_attn`, `ln_final`, ...); the parameter path below it
    says which norm it is (`LayerNorm_0/scale` or `RMSNorm_0/scale`)."""
    if kind == "layernorm":
        return LayerNorm(use_bias=use_bias, dtype=dtype, param_dtype=param_dtype, name=name)
    if kind == "rmsnorm":
        return RMSNorm(dtype=dtype, param_dtype=param_dtype, name=name)
    raise ValueError(f"norm={kind!r} is unknown; allowed: {NORMS}")


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


MLP_KINDS = ("plain", "swiglu")


class MLP(nn.Module):
    """Position-wise feed-forward block, then dropout. `plain`: wi -> activation -> wo.
    `swiglu` (Shazeer 2020; Llama): silu(wi_gate x) * wi_up x -> wo, a gated unit with three
    matrices instead of two (1.5x the parameters at the same `hidden_dim`); `activation` is the
    plain MLP's only."""

    hidden_dim: int
    activation: str = "gelu_tanh"
    kind: str = "plain"
    dropout: float = 0.0
    use_bias: bool = False
    out_init_std: float = DEFAULT_INIT_STD
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool = True) -> jax.Array:
        common = dict(use_bias=self.use_bias, dtype=self.dtype, param_dtype=self.param_dtype)
        if self.kind == "plain":
            h = Dense(self.hidden_dim, ("embed", "mlp"), name="wi", **common)(x)
            h = ACTIVATIONS[self.activation](h)
        elif self.kind == "swiglu":
            gate = Dense(self.hidden_dim, ("embed", "mlp"), name="wi_gate", **common)(x)
            up = Dense(self.hidden_dim, ("embed", "mlp"), name="wi_up", **common)(x)
            h = jax.nn.silu(gate) * up
        else:
            raise ValueError(f"mlp={self.kind!r} is unknown; allowed: {MLP_KINDS}")
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
        target_platform() == "gpu"
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
    `causal` counts query i as position i of the keys (no cache offset). Keys and values may have
    fewer heads than the queries, a divisor of theirs (grouped-query attention): query head n
    then reads key/value head n // (heads / kv_heads), jax.nn.dot_product_attention's grouping."""
    if impl == "cudnn" and mask is not None:  # cuDNN takes it as a bias of full (query, key) size
        batch, heads = mask.shape[0], mask.shape[1]
        mask = jnp.broadcast_to(mask, (batch, heads, query.shape[1], key.shape[1]))
    if impl != "reference":
        return jax.nn.dot_product_attention(
            query, key, value, mask=mask, is_causal=causal, implementation=impl
        )
    groups = query.shape[2] // key.shape[2]
    if groups > 1:  # the reference path favours plainness over the memory a repeat costs
        key, value = jnp.repeat(key, groups, axis=2), jnp.repeat(value, groups, axis=2)
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

    `num_kv_heads` (0: `num_heads`) below `num_heads`, a divisor of it, is grouped-query
    attention (Ainslie et al. 2023; Llama 2/3): each key/value head serves num_heads / num_kv_heads
    query heads, so the KV cache and the key/value projection shrink by that factor. Its
    parameters are `query_kernel` (embed, heads, kv) and `kv_kernel` (embed, 2, kv_heads, kv)
    (biases `query_bias`, `kv_bias`); with as many key/value heads as query heads they stay one
    fused `qkv_kernel` (embed, 3, heads, kv), as checkpoints of multi-head attention have them.

    `cross=True` makes it encoder-decoder attention: queries come from `x`, keys and values from
    `inputs_kv` (same width), through the same kernels (the query part for `x`, the key/value
    part for `inputs_kv`), never causal and without RoPE (the two sequences' positions are
    unrelated). In decode mode the keys/values are computed once, by the call that passes
    `inputs_kv`, and kept in the cache (`cross_key`, `cross_value`); later calls pass
    `inputs_kv=None` and reuse them.
    """

    num_heads: int
    max_len: int
    num_kv_heads: int = 0  # 0: num_heads (multi-head attention)
    causal: bool = True
    cross: bool = False
    dropout: float = 0.0
    attention_dropout: float | None = None  # on the attention weights; None: `dropout`
    use_rope: bool = False
    rope_theta: float = 10_000.0  # RoPE's max timescale (Llama 3: 500,000)
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
        kernels = self._projection_params(width, width // self.num_heads)
        if self.cross:
            query, key, value = self._cross_projections(x, inputs_kv, kernels, decode)
            return self._attend(query, key, value, False, mask, width, deterministic, decode)

        query, key, value = self._self_projections(x, kernels)  # (b, t, heads or kv_heads, d)
        if self.use_rope:
            query = apply_rope(query, positions, self.rope_theta)
            key = apply_rope(key, positions, self.rope_theta)
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

    @property
    def kv_heads(self) -> int:
        """How many key/value heads there are (`num_kv_heads`, 0 meaning `num_heads`)."""
        kv_heads = self.num_kv_heads or self.num_heads
        if kv_heads < 0 or self.num_heads % kv_heads:
            raise ValueError(
                f"num_kv_heads={self.num_kv_heads} must divide num_heads={self.num_heads}"
            )
        return kv_heads

    def _projection_params(self, width: int, head_dim: int) -> dict[str, jax.Array]:
        """The input projections' kernels and biases: the fused `qkv_*` for multi-head
        attention, `query_*` and `kv_*` for grouped-query attention (see the class docstring)."""
        heads, kv_heads = self.num_heads, self.kv_heads
        if kv_heads == heads:
            shapes = {"qkv": ((None, "heads", "kv"), (3, heads, head_dim))}
        else:
            shapes = {
                "query": (("heads", "kv"), (heads, head_dim)),
                "kv": ((None, "kv_heads", "kv"), (2, kv_heads, head_dim)),
            }
        params = {}
        for name, (axes, shape) in shapes.items():
            params[f"{name}_kernel"] = self.param(
                f"{name}_kernel",
                partitioned(normal(), ("embed", *axes)),
                (width, *shape),
                self.param_dtype,
            )
            if self.use_bias:
                params[f"{name}_bias"] = self.param(
                    f"{name}_bias",
                    partitioned(nn.initializers.zeros, axes),
                    shape,
                    self.param_dtype,
                )
        return params

    def _project(self, x: jax.Array, kernel: jax.Array, bias: jax.Array | None) -> jax.Array:
        y = matmul(x.astype(self.dtype), kernel.astype(self.dtype))
        return y if bias is None else y + bias.astype(self.dtype)

    def _query(self, x: jax.Array, params: dict[str, jax.Array]) -> jax.Array:
        """Queries (b, t, heads, d)."""
        if "qkv_kernel" in params:
            bias = params.get("qkv_bias")
            return self._project(x, params["qkv_kernel"][:, 0], None if bias is None else bias[0])
        return self._project(x, params["query_kernel"], params.get("query_bias"))

    def _key_value(self, x: jax.Array, params: dict[str, jax.Array]) -> tuple[jax.Array, jax.Array]:
        """Keys and values, each (b, s, kv_heads, d)."""
        if "qkv_kernel" in params:
            bias = params.get("qkv_bias")
            kv = self._project(x, params["qkv_kernel"][:, 1:], None if bias is None else bias[1:])
        else:
            kv = self._project(x, params["kv_kernel"], params.get("kv_bias"))
        return kv[:, :, 0], kv[:, :, 1]

    def _self_projections(
        self, x: jax.Array, params: dict[str, jax.Array]
    ) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Queries, keys and values of `x`: one matmul through the fused kernel when it exists."""
        if "qkv_kernel" not in params:
            return self._query(x, params), *self._key_value(x, params)
        qkv = self._project(x, params["qkv_kernel"], params.get("qkv_bias"))  # (b, t, 3, h, d)
        return qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]

    def _cross_projections(
        self,
        x: jax.Array,
        inputs_kv: jax.Array | None,
        params: dict[str, jax.Array],
        decode: bool,
    ) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Queries from `x`; keys/values from `inputs_kv`, or from the cache when decoding."""
        query = self._query(x, params)
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
        key, value = self._key_value(inputs_kv, params)  # each (b, s, kv_heads, d)
        if decode:
            cached_key = self.variable("cache", "cross_key", jnp.zeros, key.shape, key.dtype)
            cached_value = self.variable("cache", "cross_value", jnp.zeros, value.shape, key.dtype)
            if initialized:
                cached_key.value, cached_value.value = key, value
        return query, key, value

    def _update_cache(self, key: jax.Array, value: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Write this call's keys/values at the cache index; return the whole cache (kv_heads
        heads: grouped-query attention caches only those)."""
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
    norm: str = "layernorm",
) -> jax.Array:
    """A language model's last norm (`ln_final`, of the kind `norm` names: NORMS) and output
    layer: the embedding table transposed when `tie`, else a `head` Dense. Logits come in the
    compute dtype: a float32 copy of a (tokens x vocabulary) array costs more than the loss
    itself, so consumers upcast inside their reductions (train/losses.py). Call inside a compact
    module."""
    x = norm_layer(norm, use_bias, dtype, param_dtype, "ln_final")(x)
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
