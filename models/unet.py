"""The DDPM U-Net denoiser (Ho et al. 2020, appendix B), sized entirely from config.

Levels of `channel_mults` halve the resolution between them; each level has `num_res_blocks`
residual blocks (GroupNorm, SiLU, 3x3 convs, the timestep embedding added between the convs,
dropout before the second conv), followed by self-attention where the resolution is listed in
`attention_resolutions`. The decoder mirrors the encoder with one extra block per level, each
taking the matching encoder activation through a skip connection; a middle of block, attention,
block joins them. The attention is `models/layers.py::MultiHeadAttention` over the pixels
(bidirectional), which with one head and biases is exactly DDPM's q/k/v/out 1x1 layers.
The output layer and each block's last conv start at zero, as in DDPM, so the untrained network
predicts zero. Class-conditional models add a label embedding to the timestep embedding; the
extra label `num_classes` means "no label" (classifier-free guidance).
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from models.layers import MultiHeadAttention, partitioned
from models.timestep import Conditioning

CONV_AXES = (None, None, "conv_in", "conv_out")


def conv(features: int, kernel: int = 3, stride: int = 1, zero: bool = False, name=None):
    """A same-padded conv whose kernel carries logical axis names (DDPM's fan-average init)."""
    init = (
        nn.initializers.zeros
        if zero
        else nn.initializers.variance_scaling(1.0, "fan_avg", "uniform")
    )
    return nn.Conv(
        features,
        (kernel, kernel),
        strides=(stride, stride),
        padding="SAME",
        kernel_init=partitioned(init, CONV_AXES),
        bias_init=partitioned(nn.initializers.zeros, ("conv_out",)),
        name=name,
    )


def group_norm(groups: int, name: str | None = None) -> nn.GroupNorm:
    return nn.GroupNorm(
        num_groups=groups,
        epsilon=1e-6,
        scale_init=partitioned(nn.initializers.ones, ("conv_out",)),
        bias_init=partitioned(nn.initializers.zeros, ("conv_out",)),
        name=name,
    )


class ResBlock(nn.Module):
    features: int
    groups: int
    dropout: float

    @nn.compact
    def __call__(self, x: jax.Array, emb: jax.Array, deterministic: bool) -> jax.Array:
        h = conv(self.features, name="conv_1")(nn.silu(group_norm(self.groups, "norm_1")(x)))
        h = (
            h
            + nn.Dense(
                self.features,
                kernel_init=partitioned(nn.initializers.lecun_normal(), ("mlp", "conv_out")),
                bias_init=partitioned(nn.initializers.zeros, ("conv_out",)),
                name="emb_proj",
            )(nn.silu(emb))[:, None, None, :]
        )
        h = nn.silu(group_norm(self.groups, "norm_2")(h))
        h = nn.Dropout(self.dropout)(h, deterministic=deterministic)
        h = conv(self.features, zero=True, name="conv_2")(h)
        if x.shape[-1] != self.features:
            x = conv(self.features, kernel=1, name="skip")(x)
        return x + h


class AttentionBlock(nn.Module):
    """x + attention(GroupNorm(x)) over all pixels."""

    groups: int
    num_heads: int = 1

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        batch, height, width, channels = x.shape
        h = group_norm(self.groups, "norm")(x).reshape(batch, height * width, channels)
        h = MultiHeadAttention(
            num_heads=self.num_heads,
            max_len=height * width,
            causal=False,
            use_bias=True,
            out_init_std=0.0,  # zero output projection: the block starts as the identity
            name="attn",
        )(h, jnp.zeros((batch, height * width), jnp.int32))
        return x + h.reshape(x.shape)


class UNet(nn.Module):
    """(noisy image x_t, timestep t, optional label) -> a prediction of x_t's shape."""

    channels: int = 128
    channel_mults: Sequence[int] = (1, 2, 2, 2)
    num_res_blocks: int = 2
    attention_resolutions: Sequence[int] = (16,)
    dropout: float = 0.1
    norm_groups: int = 32
    num_heads: int = 1
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
        emb = Conditioning(
            self.channels, 4 * self.channels, self.num_timesteps, self.num_classes, name="cond"
        )(t, labels)

        def blocks(h: jax.Array, features: int, prefix: str) -> jax.Array:
            h = ResBlock(features, self.norm_groups, self.dropout, name=f"{prefix}_res")(
                h, emb, deterministic
            )
            if h.shape[1] in self.attention_resolutions:
                h = AttentionBlock(self.norm_groups, self.num_heads, name=f"{prefix}_attn")(h)
            return h

        h = conv(self.channels, name="conv_in")(x)
        skips = [h]
        for level, mult in enumerate(self.channel_mults):
            for block in range(self.num_res_blocks):
                h = blocks(h, self.channels * mult, f"down_{level}_{block}")
                skips.append(h)
            if level < len(self.channel_mults) - 1:
                h = conv(h.shape[-1], stride=2, name=f"down_{level}_sample")(h)
                skips.append(h)

        h = ResBlock(h.shape[-1], self.norm_groups, self.dropout, name="mid_res_1")(
            h, emb, deterministic
        )
        h = AttentionBlock(self.norm_groups, self.num_heads, name="mid_attn")(h)
        h = ResBlock(h.shape[-1], self.norm_groups, self.dropout, name="mid_res_2")(
            h, emb, deterministic
        )

        for level in reversed(range(len(self.channel_mults))):
            for block in range(self.num_res_blocks + 1):
                h = jnp.concatenate([h, skips.pop()], axis=-1)
                h = blocks(h, self.channels * self.channel_mults[level], f"up_{level}_{block}")
            if level > 0:
                batch, height, width_, channels = h.shape
                h = jax.image.resize(h, (batch, 2 * height, 2 * width_, channels), "nearest")
                h = conv(channels, name=f"up_{level}_sample")(h)
                # Odd sizes (28 -> 14 -> 7) come back one pixel larger; crop to the skip's size.
                h = h[:, : skips[-1].shape[1], : skips[-1].shape[2]]

        h = nn.silu(group_norm(self.norm_groups, "norm_out")(h))
        return conv(x.shape[-1], zero=True, name="conv_out")(h)
