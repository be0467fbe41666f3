"""Building blocks shared by every Transformer-shaped model: attention, MLP, positional encodings.

Every parameter carries logical axis names (`embed`, `heads`, `kv`, `mlp`, `vocab`, ...), so the
same module runs data-parallel, FSDP or tensor-parallel depending only on the rules table that
`train/partitioning.py` picks from the config.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Dtype = Any
Initializer = Callable[..., jax.Array]

DEFAULT_INIT_STD = 0.02


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
        width = x.shape[-1]
        common = dict(use_bias=self.use_bias, dtype=self.dtype, param_dtype=self.param_dtype)
        h = nn.Dense(
            self.hidden_dim,
            kernel_init=partitioned(normal(), ("embed", "mlp")),
            bias_init=partitioned(nn.initializers.zeros, ("mlp",)),
            name="wi",
            **common,
        )(x)
        h = ACTIVATIONS[self.activation](h)
        h = nn.with_logical_constraint(h, ("batch", "length", "mlp"))
        out = nn.Dense(
            width,
            kernel_init=partitioned(normal(self.out_init_std), ("mlp", "embed")),
            bias_init=partitioned(nn.initializers.zeros, ("embed",)),
            name="wo",
            **common,
        )(h)
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
    angles = positions[..., None].astype(jnp.float32) * freqs  # (batch, length, half)
    sin, cos = jnp.sin(angles)[:, :, None, :], jnp.cos(angles)[:, :, None, :]
    x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    rotated = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return rotated.astype(x.dtype)


class MultiHeadAttention(nn.Module):
    """Causal multi-head scaled-dot-product self-attention with an optional KV cache.

    In decode mode the keys and values of every call are written into a cache of `max_len`
    positions (collection `cache`), and queries attend to every cached position up to their own.
    """

    num_heads: int
    max_len: int
    dropout: float = 0.0
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
    ) -> jax.Array:
        width = x.shape[-1]
        head_dim = width // self.num_heads
        # Explicit parameters rather than nn.DenseGeneral: its flat-then-reshape initializer cannot
        # carry 3- or 4-axis logical names under sharding rules.
        qkv_kernel = self.param(
            "qkv_kernel",
            partitioned(normal(), ("embed", None, "heads", "kv")),
            (width, 3, self.num_heads, head_dim),
            self.param_dtype,
        )
        qkv = jnp.einsum("bte,ekhd->btkhd", x.astype(self.dtype), qkv_kernel.astype(self.dtype))
        if self.use_bias:
            qkv_bias = self.param(
                "qkv_bias",
                partitioned(nn.initializers.zeros, (None, "heads", "kv")),
                (3, self.num_heads, head_dim),
                self.param_dtype,
            )
            qkv = qkv + qkv_bias.astype(self.dtype)
        query, key, value = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        if self.use_rope:
            query, key = apply_rope(query, positions), apply_rope(key, positions)

        if decode:
            key, value, key_positions = self._update_cache(key, value)
        else:
            key_positions = positions
        mask = key_positions[:, None, None, :] <= positions[:, None, :, None]

        dropout_rng = None
        if self.dropout > 0.0 and not deterministic:
            dropout_rng = self.make_rng("dropout")
        out = nn.dot_product_attention(
            query,
            key,
            value,
            mask=mask,
            dropout_rng=dropout_rng,
            dropout_rate=self.dropout,
            deterministic=deterministic,
            dtype=self.dtype,
        )
        out = nn.with_logical_constraint(out, ("batch", "length", "heads", "kv"))
        out_kernel = self.param(
            "out_kernel",
            partitioned(normal(self.out_init_std), ("heads", "kv", "embed")),
            (self.num_heads, head_dim, width),
            self.param_dtype,
        )
        out = jnp.einsum("bthd,hde->bte", out, out_kernel.astype(self.dtype))
        if self.use_bias:
            out_bias = self.param(
                "out_bias",
                partitioned(nn.initializers.zeros, ("embed",)),
                (width,),
                self.param_dtype,
            )
            out = out + out_bias.astype(self.dtype)
        return nn.Dropout(self.dropout)(out, deterministic=deterministic)

    def _update_cache(
        self, key: jax.Array, value: jax.Array
    ) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Write this call's keys/values at the cache index; return the whole cache."""
        batch, length, heads, head_dim = key.shape
        shape = (batch, self.max_len, heads, head_dim)
        initialized = self.has_variable("cache", "key")
        cached_key = self.variable("cache", "key", jnp.zeros, shape, key.dtype)
        cached_value = self.variable("cache", "value", jnp.zeros, shape, value.dtype)
        index = self.variable("cache", "index", lambda: jnp.zeros((), jnp.int32))
        # Slot j holds position j, so the causal test `j <= query position` also hides the
        # slots not written yet.
        key_positions = jnp.arange(self.max_len)[None, :].repeat(batch, 0)
        if initialized:
            start = index.value
            cached_key.value = jax.lax.dynamic_update_slice(cached_key.value, key, (0, start, 0, 0))
            cached_value.value = jax.lax.dynamic_update_slice(
                cached_value.value, value, (0, start, 0, 0)
            )
            index.value = start + length
        return cached_key.value, cached_value.value, key_positions
