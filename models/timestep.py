"""What diffusion denoisers are conditioned on (timestep and label), shared by the U-Net and the
DiT."""

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


class Conditioning(nn.Module):
    """The vector a denoiser is conditioned on: the timestep's embedding, plus for
    class-conditional models a learned vector per class. Class `num_classes` means "no label",
    which classifier-free guidance trains by dropping labels and samples with."""

    frequency_dim: int
    features: int
    num_timesteps: int
    num_classes: int = 0

    @nn.compact
    def __call__(self, t: jax.Array, labels: jax.Array | None) -> jax.Array:
        emb = TimestepEmbedding(self.frequency_dim, self.features, self.num_timesteps, name="time")
        out = emb(t)
        if self.num_classes:
            out = out + nn.Embed(
                self.num_classes + 1,
                self.features,
                embedding_init=partitioned(nn.initializers.normal(0.02), (None, "mlp")),
                name="label_embed",
            )(labels)
        return out
