"""DiT: a Transformer denoiser over image patches (Peebles & Xie 2023).

The image is cut into `patch_size` squares, each linearly embedded, plus a fixed 2-D sin-cos
position embedding. Every block conditions on the timestep (and label) through adaLN-Zero: a
linear map of the conditioning vector gives a shift, a scale and a gate for the attention and
MLP branches, initialised to zero so each block starts as the identity. Attention and MLP are
the ones in `models/layers.py` (bidirectional attention). A final adaptive LayerNorm and a
zero-initialised linear layer map each token back to its patch's pixels.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from models.layers import MLP, Dense, MultiHeadAttention, partitioned, sinusoidal_table
from models.timestep import Conditioning


def position_table_2d(grid: int, dim: int) -> np.ndarray:
    """(grid^2, dim): the first half of each vector encodes the patch's row, the second its
    column, each with the 1-D sin-cos table."""
    table = sinusoidal_table(grid, dim // 2)
    rows, columns = np.meshgrid(np.arange(grid), np.arange(grid), indexing="ij")
    return np.concatenate([table[rows.ravel()], table[columns.ravel()]], axis=-1)


def patchify(x: jax.Array, patch: int) -> jax.Array:
    """(B, H, W, C) -> (B, H/p * W/p, p*p*C), patches in row-major order."""
    batch, height, width, channels = x.shape
    x = x.reshape(batch, height // patch, patch, width // patch, patch, channels)
    return x.transpose(0, 1, 3, 2, 4, 5).reshape(batch, -1, patch * patch * channels)


def unpatchify(tokens: jax.Array, patch: int, height: int, channels: int) -> jax.Array:
    """The inverse of `patchify` for square images of side `height`."""
    batch, grid = tokens.shape[0], height // patch
    x = tokens.reshape(batch, grid, grid, patch, patch, channels)
    return x.transpose(0, 1, 3, 2, 4, 5).reshape(batch, height, height, channels)


def modulate(x: jax.Array, shift: jax.Array, scale: jax.Array) -> jax.Array:
    return x * (1.0 + scale[:, None, :]) + shift[:, None, :]


def _plain_norm(x: jax.Array) -> jax.Array:
    """LayerNorm without a learned scale or bias: adaLN supplies them."""
    return nn.LayerNorm(use_scale=False, use_bias=False, epsilon=1e-6)(x)


def _adaptive(features: int, count: int, cond: jax.Array, name: str) -> list[jax.Array]:
    """`count` vectors of `features` from the conditioning vector, all zero at initialisation."""
    out = Dense(features * count, ("mlp", "embed"), use_bias=True, init_std=0.0, name=name)(
        nn.silu(cond)
    )
    return jnp.split(out, count, axis=-1)


class DiTBlock(nn.Module):
    num_heads: int
    mlp_ratio: float
    dropout: float

    @nn.compact
    def __call__(self, x: jax.Array, cond: jax.Array, deterministic: bool) -> jax.Array:
        width = x.shape[-1]
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = _adaptive(width, 6, cond, "adaln")
        attention = MultiHeadAttention(
            num_heads=self.num_heads,
            max_len=x.shape[1],
            causal=False,
            dropout=self.dropout,
            use_bias=True,
            name="attn",
        )
        positions = jnp.zeros(x.shape[:2], jnp.int32)  # unused: positions are added up front
        h = attention(modulate(_plain_norm(x), shift_a, scale_a), positions, deterministic)
        x = x + gate_a[:, None, :] * h
        mlp = MLP(int(width * self.mlp_ratio), dropout=self.dropout, use_bias=True, name="mlp")
        h = mlp(modulate(_plain_norm(x), shift_m, scale_m), deterministic=deterministic)
        x = x + gate_m[:, None, :] * h
        return nn.with_logical_constraint(x, ("batch", "length", "embed"))


class DiT(nn.Module):
    """(noisy image x_t, timestep t, optional label) -> a prediction of x_t's shape."""

    patch_size: int = 2
    width: int = 384
    depth: int = 12
    num_heads: int = 6
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    num_timesteps: int = 1000
    num_classes: int = 0  # > 0: class-conditional (label num_classes = unconditional)

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        t: jax.Array,
        labels: jax.Array | None = None,
        deterministic: bool = True,
    ) -> jax.Array:
        _, height, width, channels = x.shape
        if height != width or height % self.patch_size:
            raise ValueError(f"DiT needs square images divisible by the patch, got {x.shape}")
        tokens = Dense(self.width, (None, "embed"), use_bias=True, name="patch_embed")(
            patchify(x, self.patch_size)
        )
        grid = height // self.patch_size
        tokens = tokens + jnp.asarray(position_table_2d(grid, self.width))[None]
        cond = Conditioning(256, self.width, self.num_timesteps, self.num_classes, name="cond")(
            t, labels
        )
        for index in range(self.depth):
            tokens = DiTBlock(self.num_heads, self.mlp_ratio, self.dropout, name=f"block_{index}")(
                tokens, cond, deterministic
            )
        shift, scale = _adaptive(self.width, 2, cond, "final_adaln")
        tokens = modulate(_plain_norm(tokens), shift, scale)
        patch_pixels = self.patch_size**2 * channels
        out = nn.Dense(
            patch_pixels,
            kernel_init=partitioned(nn.initializers.zeros, ("embed", None)),
            bias_init=partitioned(nn.initializers.zeros, (None,)),
            name="to_patches",
        )(tokens)
        return unpatchify(out, self.patch_size, height, channels)
