"""A Mamba-style selective state-space language model (Gu & Dao 2023).

Each block mixes the sequence with a diagonal linear recurrence whose step size Δ and input/output
maps B, C depend on the token (that is what "selective" means):

    h_t = exp(Δ_t A) h_{t-1} + Δ_t B_t x_t,        y_t = C_t h_t + D x_t

Training runs the recurrence over the whole window at once with `jax.lax.associative_scan`
(log-depth, parallel over time). Generation runs it one token at a time from a fixed-size state,
the last `conv_width - 1` conv inputs and h, kept in the `cache` collection as the Transformer
keeps its KV cache: O(1) memory per token and no limit on length.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from models.layers import LayerNorm, matmul, next_token_logits, normal, partitioned, token_embedding

Array = jax.Array

# Mamba's mixer sizes: the one place they are written (the model defaults and the configs' keys).
MAMBA_DEFAULTS: dict[str, int] = {
    "state_dim": 16,  # S: state size per inner channel
    "conv_width": 4,  # causal depthwise conv taps
    "expand": 2,  # inner width E = expand * emb_dim
    "dt_rank": 0,  # rank of the step-size projection; 0: ceil(emb_dim / 16)
}


def selective_scan(decay: Array, drive: Array, initial: Array | None = None) -> Array:
    """Every state h_t = decay_t * h_{t-1} + drive_t along axis 0 (time), computed in parallel.

    decay, drive: (length, batch, inner, state); initial: h_{-1}, (batch, inner, state) or None
    (zeros). Pairs compose associatively: applying (a1, b1) then (a2, b2) is (a1 a2, a2 b1 + b2).
    """

    def compose(earlier: tuple[Array, Array], later: tuple[Array, Array]) -> tuple[Array, Array]:
        a1, b1 = earlier
        a2, b2 = later
        return a1 * a2, a2 * b1 + b2

    total_decay, states = jax.lax.associative_scan(compose, (decay, drive), axis=0)
    if initial is not None:
        states = states + total_decay * initial[None]
    return states


def selective_step(state: Array, decay: Array, drive: Array) -> Array:
    """One step of the same recurrence: (batch, inner, state) in and out."""
    return decay * state + drive


def _fan_in_uniform(fan_in: int) -> nn.initializers.Initializer:
    """PyTorch's default Linear/Conv init, U(-1/sqrt(fan_in), 1/sqrt(fan_in)), as Mamba uses."""
    bound = 1.0 / math.sqrt(fan_in)
    return lambda key, shape, dtype=jnp.float32: jax.random.uniform(
        key, shape, dtype, -bound, bound
    )


def _s4d_real_init(key: Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> Array:
    """S4D-real: A_n = -(n + 1) for state n, stored as log(-A) so A stays negative."""
    del key
    return jnp.broadcast_to(jnp.log(jnp.arange(1, shape[-1] + 1, dtype=dtype)), shape)


def _dt_bias_init(dt_min: float, dt_max: float, floor: float = 1e-4) -> nn.initializers.Initializer:
    """Bias whose softplus is a step size drawn log-uniformly from [dt_min, dt_max] (Mamba)."""

    def init(key: Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> Array:
        log_dt = jax.random.uniform(key, shape, dtype, math.log(dt_min), math.log(dt_max))
        dt = jnp.maximum(jnp.exp(log_dt), floor)
        return dt + jnp.log(-jnp.expm1(-dt))  # the inverse of softplus

    return init


class SelectiveSSM(nn.Module):
    """The Mamba mixer: in-projection to (x, gate), causal depthwise conv, SiLU, selective scan
    with a D skip, SiLU gating, out-projection. Width `emb_dim` in and out, `expand * emb_dim`
    inside (named `mlp`, so tensor parallelism splits it)."""

    state_dim: int = MAMBA_DEFAULTS["state_dim"]
    conv_width: int = MAMBA_DEFAULTS["conv_width"]
    expand: int = MAMBA_DEFAULTS["expand"]
    dt_rank: int = MAMBA_DEFAULTS["dt_rank"]
    dt_min: float = 1e-3
    dt_max: float = 1e-1
    out_init_std: float = 0.02
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, decode: bool = False) -> Array:
        batch, length, width = x.shape
        inner, n, k = self.expand * width, self.state_dim, self.conv_width
        rank = self.dt_rank or math.ceil(width / 16)
        pd = self.param_dtype

        in_kernel = self.param(
            "in_kernel", partitioned(normal(), ("embed", None, "mlp")), (width, 2, inner), pd
        )
        xz = matmul(x.astype(self.dtype), in_kernel.astype(self.dtype))  # (b, t, 2, inner)
        u, gate = xz[..., 0, :], xz[..., 1, :]
        u = nn.with_logical_constraint(u, ("batch", "length", "mlp"))

        if decode:
            initialized = self.has_variable("cache", "conv_state")
            conv_state = self.variable(
                "cache", "conv_state", jnp.zeros, (batch, k - 1, inner), self.dtype
            )
            ssm_state = self.variable(
                "cache", "ssm_state", jnp.zeros, (batch, inner, n), jnp.float32
            )
            history = conv_state.value
        else:
            history = jnp.zeros((batch, k - 1, inner), u.dtype)
        u, history = self._causal_conv(u, history)

        x_kernel = self.param(
            "x_kernel",
            partitioned(_fan_in_uniform(inner), ("mlp", None)),
            (inner, rank + 2 * n),
            pd,
        )
        dbc = matmul(u, x_kernel.astype(self.dtype)).astype(jnp.float32)
        dt_low, b_in, c_out = jnp.split(dbc, [rank, rank + n], axis=-1)
        dt_kernel = self.param(
            "dt_kernel", partitioned(_fan_in_uniform(rank), (None, "mlp")), (rank, inner), pd
        )
        dt_bias = self.param(
            "dt_bias", partitioned(_dt_bias_init(self.dt_min, self.dt_max), ("mlp",)), (inner,), pd
        )
        delta = jax.nn.softplus(matmul(dt_low, dt_kernel.astype(jnp.float32)) + dt_bias)
        a_log = self.param("a_log", partitioned(_s4d_real_init, ("mlp", None)), (inner, n), pd)
        d_skip = self.param("d_skip", partitioned(nn.initializers.ones, ("mlp",)), (inner,), pd)

        # The recurrence runs in float32 whatever the compute dtype (exp(Δ A) products underflow),
        # time-major, so the scan's slices along time are contiguous: (t, b, inner, n).
        u32 = u.astype(jnp.float32)
        delta_t, b_t = delta.swapaxes(0, 1), b_in.swapaxes(0, 1)
        decay = jnp.exp(delta_t[..., None] * -jnp.exp(a_log.astype(jnp.float32)))
        drive = (delta_t * u32.swapaxes(0, 1))[..., None] * b_t[:, :, None, :]
        if decode and length == 1:  # the recurrent form: one step from the carried state
            states = selective_step(ssm_state.value, decay[0], drive[0])[None]
        else:
            states = selective_scan(decay, drive, ssm_state.value if decode else None)
        y = jnp.einsum("tbin,btn->bti", states, c_out) + d_skip.astype(jnp.float32) * u32
        y = (y.astype(self.dtype) * jax.nn.silu(gate)).astype(self.dtype)
        y = nn.with_logical_constraint(y, ("batch", "length", "mlp"))
        if decode and initialized:
            conv_state.value = history
            ssm_state.value = states[-1]

        out_kernel = self.param(
            "out_kernel",
            partitioned(normal(self.out_init_std), ("mlp", "embed")),
            (inner, width),
            pd,
        )
        return matmul(y, out_kernel.astype(self.dtype))

    def _causal_conv(self, u: Array, history: Array) -> tuple[Array, Array]:
        """Depthwise conv over time, output t seeing inputs t-k+1..t only, then SiLU.

        `history` holds the k-1 inputs before this call's first (zeros at the start); the
        returned history holds the last k-1 inputs, for the next call.
        """
        length, inner, k = u.shape[1], u.shape[2], self.conv_width
        kernel = self.param(
            "conv_kernel",
            partitioned(_fan_in_uniform(k), (None, "mlp")),
            (k, inner),
            self.param_dtype,
        )
        bias = self.param(
            "conv_bias", partitioned(_fan_in_uniform(k), ("mlp",)), (inner,), self.param_dtype
        )
        padded = jnp.concatenate([history.astype(u.dtype), u], axis=1)  # (b, k-1+t, inner)
        kernel = kernel.astype(self.dtype)
        out = sum(padded[:, tap : tap + length] * kernel[tap] for tap in range(k))
        return jax.nn.silu(out + bias.astype(self.dtype)), padded[:, length:]


class SSMBlock(nn.Module):
    """Pre-norm residual block: x + ssm(LN(x))."""

    state_dim: int
    conv_width: int
    expand: int
    dt_rank: int
    dropout: float
    out_init_std: float
    dtype: Any
    param_dtype: Any

    @nn.compact
    def __call__(self, x: Array, deterministic: bool, decode: bool) -> Array:
        h = LayerNorm(dtype=self.dtype, param_dtype=self.param_dtype, name="ln")(x)
        h = SelectiveSSM(
            state_dim=self.state_dim,
            conv_width=self.conv_width,
            expand=self.expand,
            dt_rank=self.dt_rank,
            out_init_std=self.out_init_std,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="ssm",
        )(h, decode=decode)
        x = x + nn.Dropout(self.dropout)(h, deterministic=deterministic)
        return nn.with_logical_constraint(x, ("batch", "length", "embed"))


class SSMLM(nn.Module):
    """Decoder LM from selective-SSM blocks: tokens (batch, length) -> next-token logits.

    Same call as `models.transformer.DecoderLM`. `decode=True` continues from the state in the
    `cache` collection: a prompt of any length runs through the parallel scan from that state,
    a single token takes one recurrent step.
    """

    vocab_size: int
    num_layers: int
    emb_dim: int
    state_dim: int = MAMBA_DEFAULTS["state_dim"]
    conv_width: int = MAMBA_DEFAULTS["conv_width"]
    expand: int = MAMBA_DEFAULTS["expand"]
    dt_rank: int = MAMBA_DEFAULTS["dt_rank"]
    dropout: float = 0.0
    tie_embeddings: bool = True
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, tokens: Array, deterministic: bool = True, decode: bool = False) -> Array:
        embed = token_embedding(self.vocab_size, self.emb_dim, self.dtype, self.param_dtype)
        x = nn.Dropout(self.dropout)(embed(tokens), deterministic=deterministic)
        x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
        out_init_std = 0.02 / math.sqrt(2 * self.num_layers)  # scaled residual init, as GPT-2
        for layer in range(self.num_layers):
            x = SSMBlock(
                state_dim=self.state_dim,
                conv_width=self.conv_width,
                expand=self.expand,
                dt_rank=self.dt_rank,
                dropout=self.dropout,
                out_init_std=out_init_std,
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                name=f"block_{layer}",
            )(x, deterministic, decode)
        return next_token_logits(x, embed, self.tie_embeddings, False, self.dtype, self.param_dtype)
