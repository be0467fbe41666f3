"""Variational autoencoders (Kingma & Welling 2014) with one or more stochastic layers.

q(z1|x) q(z2|z1) ... encode; p(zL) = N(0, I), p(z_{l-1}|z_l) and p(x|z1) decode. Gaussian layers
output a mean and a log-variance and are sampled with the reparameterization trick. The first layer
(x <-> z1) is an MLP (the IWAE paper's tanh networks) or a small convnet. `__call__` returns the
terms of log importance weights for S samples per input, from which the task forms the ELBO and
the importance-weighted bound.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from models.layers import partitioned

LOG_2PI = math.log(2 * math.pi)
IMAGE_AXES = (-3, -2, -1)


def gaussian_log_prob(z: jax.Array, mean: jax.Array, logvar: jax.Array) -> jax.Array:
    """log N(z; mean, exp(logvar)) summed over the last axis."""
    return -0.5 * jnp.sum(LOG_2PI + logvar + (z - mean) ** 2 * jnp.exp(-logvar), axis=-1)


def kl_to_standard_normal(mean: jax.Array, logvar: jax.Array) -> jax.Array:
    """KL(N(mean, exp(logvar)) || N(0, I)) in closed form, summed over the last axis."""
    return 0.5 * jnp.sum(jnp.exp(logvar) + mean**2 - 1.0 - logvar, axis=-1)


def bernoulli_log_prob(x: jax.Array, logits: jax.Array) -> jax.Array:
    """log p(x | logits) for x in {0, 1}, summed over the image axes (H, W, C)."""
    return jnp.sum(x * logits - jax.nn.softplus(logits), axis=IMAGE_AXES)


def discretized_logistic_log_prob(
    x: jax.Array, mean: jax.Array, log_scale: jax.Array, levels: int = 256
) -> jax.Array:
    """log P(x) of grey levels in [-1, 1] under a logistic discretized into `levels` bins
    (the edge bins extend to infinity), summed over the image axes (H, W, C)."""
    half_bin = 1.0 / (levels - 1)
    inv_scale = jnp.exp(-log_scale)
    upper = jax.nn.sigmoid((x + half_bin - mean) * inv_scale)
    lower = jax.nn.sigmoid((x - half_bin - mean) * inv_scale)
    log_upper = jax.nn.log_sigmoid((x + half_bin - mean) * inv_scale)  # for x at the bottom bin
    log_one_minus_lower = -jax.nn.softplus((x - half_bin - mean) * inv_scale)  # for the top bin
    middle = jnp.log(jnp.maximum(upper - lower, 1e-12))
    log_prob = jnp.where(x < -0.999, log_upper, jnp.where(x > 0.999, log_one_minus_lower, middle))
    return jnp.sum(log_prob, axis=IMAGE_AXES)


def _dense(features: int, name: str | None = None) -> nn.Dense:
    return nn.Dense(
        features,
        name=name,
        kernel_init=partitioned(nn.initializers.lecun_normal(), ("embed", "mlp")),
        bias_init=partitioned(nn.initializers.zeros, ("mlp",)),
    )


class GaussianMLP(nn.Module):
    """Two tanh hidden layers, then the mean and log-variance of a diagonal Gaussian."""

    hidden: int
    latent: int

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        h = jnp.tanh(_dense(self.hidden)(x))
        h = jnp.tanh(_dense(self.hidden)(h))
        stats = _dense(2 * self.latent)(h)
        mean, logvar = jnp.split(stats, 2, axis=-1)
        return mean, logvar


def _conv(features: int, stride: int) -> nn.Conv:
    return nn.Conv(
        features,
        (4, 4),
        strides=(stride, stride),
        padding="SAME",
        kernel_init=partitioned(
            nn.initializers.lecun_normal(), (None, None, "conv_in", "conv_out")
        ),
        bias_init=partitioned(nn.initializers.zeros, ("conv_out",)),
    )


class ConvEncoder(nn.Module):
    """28x28 -> 14x14 -> 7x7 strided convolutions, then the Gaussian's mean and log-variance."""

    width: int
    latent: int

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        h = nn.gelu(_conv(self.width, 2)(x))
        h = nn.gelu(_conv(2 * self.width, 2)(h))
        h = h.reshape(*h.shape[:-3], -1)
        stats = _dense(2 * self.latent)(h)
        return tuple(jnp.split(stats, 2, axis=-1))


class ConvDecoder(nn.Module):
    """z -> 7x7 features -> 14x14 -> 28x28 transposed convolutions -> per-pixel outputs."""

    width: int
    shape: tuple[int, int, int]
    outputs_per_pixel: int

    @nn.compact
    def __call__(self, z: jax.Array) -> jax.Array:
        height, width, channels = self.shape
        h = nn.gelu(_dense(2 * self.width * (height // 4) * (width // 4))(z))
        h = h.reshape(*z.shape[:-1], height // 4, width // 4, 2 * self.width)
        lead = h.shape[:-3]
        h = h.reshape(-1, *h.shape[-3:])
        h = nn.gelu(nn.ConvTranspose(self.width, (4, 4), strides=(2, 2), padding="SAME")(h))
        h = nn.ConvTranspose(
            channels * self.outputs_per_pixel, (4, 4), strides=(2, 2), padding="SAME"
        )(h)
        return h.reshape(*lead, height, width, channels * self.outputs_per_pixel)


class VAE(nn.Module):
    """A VAE with `len(latents)` stochastic layers; `hiddens[l]` is layer l's hidden width."""

    latents: Sequence[int] = (50,)
    hiddens: Sequence[int] = (200,)
    image_shape: tuple[int, int, int] = (28, 28, 1)
    likelihood: str = "bernoulli"  # bernoulli | logistic (discretized, for grey levels)
    arch: str = "mlp"  # mlp | conv: the network between x and z1
    conv_width: int = 32

    def setup(self):
        pixels = math.prod(self.image_shape)
        per_pixel = 1 if self.likelihood == "bernoulli" else 2
        if self.arch == "conv":
            self.encode_x = ConvEncoder(self.conv_width, self.latents[0])
            self.decode_x = ConvDecoder(self.conv_width, tuple(self.image_shape), per_pixel)
        else:
            self.encode_x = GaussianMLP(self.hiddens[0], self.latents[0])
            self.decode_x = nn.Sequential(
                [
                    _dense(self.hiddens[0]),
                    jnp.tanh,
                    _dense(self.hiddens[0]),
                    jnp.tanh,
                    _dense(pixels * per_pixel),
                ]
            )
        self.encoders = [
            GaussianMLP(h, z) for h, z in zip(self.hiddens[1:], self.latents[1:], strict=True)
        ]
        # p(z_{l-1} | z_l) for l = 2..L, with layer l-1's hidden width
        self.decoders = [
            GaussianMLP(h, z) for h, z in zip(self.hiddens[1:], self.latents[:-1], strict=True)
        ]

    def _x_input(self, x: jax.Array) -> jax.Array:
        return x if self.arch == "conv" else x.reshape(*x.shape[:-3], -1)

    def likelihood_params(self, z1: jax.Array) -> jax.Array:
        """Decoder output for z1, shaped (..., H, W, C * outputs per pixel)."""
        out = self.decode_x(z1)
        per_pixel = 1 if self.likelihood == "bernoulli" else 2
        height, width, channels = self.image_shape
        return out.reshape(*z1.shape[:-1], height, width, channels * per_pixel)

    def log_likelihood(self, x: jax.Array, z1: jax.Array) -> jax.Array:
        out = self.likelihood_params(z1)
        if self.likelihood == "bernoulli":
            return bernoulli_log_prob(x, out)
        mean, log_scale = jnp.split(out, 2, axis=-1)
        return discretized_logistic_log_prob(x, jnp.tanh(mean), jnp.maximum(log_scale, -7.0))

    def mean_image(self, z1: jax.Array) -> jax.Array:
        """The decoder's expected image in the data's range (for pictures)."""
        out = self.likelihood_params(z1)
        if self.likelihood == "bernoulli":
            return jax.nn.sigmoid(out)
        return jnp.tanh(jnp.split(out, 2, axis=-1)[0])

    def __call__(self, x: jax.Array, rng: jax.Array, num_samples: int = 1) -> dict[str, Any]:
        """Sample z ~ q(z|x) `num_samples` times; return log p(x|z1), log p(z), log q(z|x) per
        sample (shape [S, B]), the closed-form KL of the first layer when there is only one, and
        the posterior means of z1."""
        keys = jax.random.split(rng, len(self.latents))
        mean, logvar = self.encode_x(self._x_input(x))
        posterior_mean = mean
        eps = jax.random.normal(keys[0], (num_samples, *mean.shape))
        z = mean + jnp.exp(0.5 * logvar) * eps
        log_q = gaussian_log_prob(z, mean, logvar)
        samples = [z]
        for layer, encoder in enumerate(self.encoders, start=1):
            mean, logvar = encoder(z)
            z = mean + jnp.exp(0.5 * logvar) * jax.random.normal(keys[layer], mean.shape)
            log_q = log_q + gaussian_log_prob(z, mean, logvar)
            samples.append(z)
        log_p = gaussian_log_prob(samples[-1], 0.0, jnp.zeros_like(samples[-1]))
        for layer, decoder in enumerate(self.decoders):
            mean, logvar = decoder(samples[layer + 1])
            log_p = log_p + gaussian_log_prob(samples[layer], mean, logvar)
        x_rep = jnp.broadcast_to(x, (num_samples, *x.shape))
        result = {
            "log_px_z": self.log_likelihood(x_rep, samples[0]),
            "log_pz": log_p,
            "log_qz": log_q,
            "posterior_mean": posterior_mean,
        }
        if len(self.latents) == 1:
            stats = self.encode_x(self._x_input(x))
            result["kl"] = kl_to_standard_normal(*stats)
        return result

    def sample_z1(self, rng: jax.Array, count: int) -> jax.Array:
        """Ancestral samples of z1 from the prior through the decoder's Gaussian layers."""
        keys = jax.random.split(rng, len(self.latents))
        z = jax.random.normal(keys[-1], (count, self.latents[-1]))
        for layer in reversed(range(len(self.decoders))):
            mean, logvar = self.decoders[layer](z)
            z = mean + jnp.exp(0.5 * logvar) * jax.random.normal(keys[layer], mean.shape)
        return z

    def encode_mean(self, x: jax.Array) -> jax.Array:
        return self.encode_x(self._x_input(x))[0]
