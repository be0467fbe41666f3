"""Conditioning inputs of diffusion denoisers: the timestep embedding and the label embedding,
shared by the U-Net and the DiT."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from models.layers import partitioned, sinusoidal_table


class TimestepEmbedding(nn.Module):
    """Integer timestep -> sinusoidal features (the Transformer's position table, read at t) ->
    Dense -> SiLU -> Dense, as in DDPM and DiT."""

    frequency_dim: int
    features: int
    num_timesteps: int

    @nn.compact
    def __call__(self, t: jax.Array) -> jax.Array:
        table = jnp.asarray(sinusoidal_table(self.num_timesteps, self.frequency_dim))
        h = jnp.take(table, t, axis=0)
        for index in range(2):
            if index:
                h = nn.silu(h)
            h = nn.Dense(
                self.features,
                kernel_init=partitioned(nn.initializers.lecun_normal(), (None, "mlp")),
                bias_init=partitioned(nn.initializers.zeros, ("mlp",)),
                name=f"dense_{index}",
            )(h)
        return h


def label_embedding(num_classes: int, features: int, labels: jax.Array) -> jax.Array:
    """One vector per class, plus one for "no label" (index `num_classes`), which classifier-free
    guidance trains by dropping labels and samples with. Call inside a compact module."""
    return nn.Embed(
        num_classes + 1,
        features,
        embedding_init=partitioned(nn.initializers.normal(0.02), (None, "mlp")),
        name="label_embed",
    )(labels)
