"""DCGAN-style generator and discriminator (Radford et al. 2016) for 28x28 and 32x32 images.

The shapes follow the "standard CNN" of the spectral-normalization paper (Miyato et al. 2018,
Table 3), sized by one `width` and the image size:
- generator: z -> dense to (S/2^n)^2 x width*2^n -> n x [2x upsampling halving the channels,
  batch norm, ReLU] -> 3x3 conv to the image channels -> tanh; n = 2 for 28x28 (7 -> 14 -> 28),
  n = 3 for 32x32 (4 -> 8 -> 16 -> 32). Upsampling is DCGAN's 4x4 stride-2 transposed conv, or
  a sub-pixel conv (Shi et al. 2016: a 3x3 conv to 4x the channels, then depth-to-space), whose
  gradient XLA's CPU backend computes 5-10x faster than the transposed conv's.
- discriminator: n x [3x3 conv, 4x4 stride-2 conv] with widths width*2^i, a last 3x3 conv of
  width*2^n, LeakyReLU(0.1) after each, then a linear output. Its layers are normalized as DCGAN
  does (`batch`: batch norm after every conv but the first), or spectrally (`spectral`: Flax's
  `nn.SpectralNorm`, whose power-iteration vectors live in the `spectral` collection; its
  parameters then carry no logical axis names and are replicated), or not at all (`none`; for
  WGAN-GP and R1, whose penalties need each example's gradient on its own), and, for
  class-conditional models, a projection term <embed(y), features> is added (Miyato & Koyama
  2018).

Batch norm always normalizes with the statistics of the batch at hand, as DCGAN code does when
it samples in training mode: there are no running averages to keep, and samples are drawn in
large batches (500 for FID), where the statistics are stable.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from models.layers import partitioned

SPECTRAL = "spectral"  # the variable collection of the spectral-norm power iteration
D_NORMS = ("batch", "spectral", "none")
UPSAMPLING = ("transposed", "subpixel")


def stages(image_size: int) -> int:
    """How many 2x resolution steps separate the image from the smallest feature map."""
    if image_size == 28:
        return 2
    if image_size == 32:
        return 3
    raise ValueError(f"image size {image_size}: the DCGAN models support 28 and 32")


def _named(init: nn.initializers.Initializer, axes: tuple[str | None, ...], boxed: bool = True):
    """`init` with logical axis names, or plain when `boxed` is False (Flax's SpectralNorm cannot
    see through the boxes, so a spectrally normalized discriminator stays replicated)."""
    return partitioned(init, axes) if boxed else init


def _conv_init(boxed: bool = True):
    return _named(nn.initializers.normal(0.02), (None, None, "conv_in", "conv_out"), boxed)


def _batch_norm(name: str) -> nn.BatchNorm:
    """Batch norm over the batch at hand, never running averages (see the module doc)."""
    return nn.BatchNorm(
        use_running_average=False,
        scale_init=partitioned(nn.initializers.ones, ("conv_out",)),
        bias_init=partitioned(nn.initializers.zeros, ("conv_out",)),
        name=name,
    )


def depth_to_space(x: jax.Array, block: int = 2) -> jax.Array:
    """(B, H, W, block^2 C) -> (B, block H, block W, C): channel groups become pixel offsets."""
    batch, height, width, channels = x.shape
    out = channels // block**2
    x = x.reshape(batch, height, width, block, block, out).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(batch, height * block, width * block, out)


class Upsample(nn.Module):
    """2x upsampling to `features` channels: a transposed conv or a sub-pixel conv."""

    features: int
    kind: str = "transposed"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if self.kind == "transposed":
            return nn.ConvTranspose(
                self.features,
                (4, 4),
                strides=(2, 2),
                padding="SAME",
                use_bias=False,
                kernel_init=_conv_init(),
                name="conv",
            )(x)
        if self.kind == "subpixel":
            x = nn.Conv(
                4 * self.features, (3, 3), padding="SAME", use_bias=False, kernel_init=_conv_init()
            )(x)
            return depth_to_space(x)
        raise ValueError(f"upsampling {self.kind!r}; allowed: {', '.join(UPSAMPLING)}")


class Generator(nn.Module):
    """z (and a class label) -> image in [-1, 1] of shape `image_shape`."""

    image_shape: tuple[int, int, int]
    width: int = 64
    num_classes: int = 0  # > 0: class-conditional (a label embedding joins z)
    upsample: str = "transposed"  # transposed | subpixel

    @nn.compact
    def __call__(self, z: jax.Array, labels: jax.Array | None = None) -> jax.Array:
        height, _, channels = self.image_shape
        n = stages(height)
        size, features = height // 2**n, self.width * 2**n
        if self.num_classes:
            embedding = nn.Embed(
                self.num_classes,
                z.shape[-1],
                embedding_init=partitioned(nn.initializers.normal(1.0), (None, None)),
                name="label_embed",
            )(labels)
            z = jnp.concatenate([z, embedding], axis=-1)
        x = nn.Dense(
            size * size * features,
            kernel_init=partitioned(nn.initializers.normal(0.02), (None, "conv_out")),
            bias_init=partitioned(nn.initializers.zeros, ("conv_out",)),
            name="project",
        )(z)
        x = x.reshape(-1, size, size, features)
        x = nn.relu(_batch_norm("norm_in")(x))
        for i in range(n):
            features //= 2
            x = Upsample(features, self.upsample, name=f"up_{i}")(x)
            x = nn.relu(_batch_norm(f"norm_{i}")(x))
        x = nn.Conv(
            channels,
            (3, 3),
            padding="SAME",
            kernel_init=_conv_init(),
            bias_init=partitioned(nn.initializers.zeros, ("conv_out",)),
            name="to_image",
        )(x)
        return jnp.tanh(x)


class Discriminator(nn.Module):
    """Image (and class label) -> one real-vs-fake logit per image."""

    width: int = 64
    norm: str = "batch"  # batch | spectral | none
    num_classes: int = 0  # > 0: projection discriminator

    @nn.compact
    def __call__(
        self, x: jax.Array, labels: jax.Array | None = None, update_stats: bool = False
    ) -> jax.Array:
        n = stages(x.shape[1])
        if self.norm not in D_NORMS:
            raise ValueError(f"discriminator norm {self.norm!r}; allowed: {', '.join(D_NORMS)}")
        spectral = self.norm == "spectral"
        boxed = not spectral

        def layer(module: nn.Module, h: jax.Array) -> jax.Array:
            if spectral:
                wrapped = nn.SpectralNorm(module, collection_name=SPECTRAL)
                return wrapped(h, update_stats=update_stats)
            return module(h)

        def activate(h: jax.Array, index: int) -> jax.Array:
            if self.norm == "batch" and index > 0:
                h = _batch_norm(f"norm_{index}")(h)
            return nn.leaky_relu(h, 0.1)

        def conv(features: int, kernel: int, stride: int, name: str) -> nn.Conv:
            return nn.Conv(
                features,
                (kernel, kernel),
                strides=(stride, stride),
                padding="SAME",
                kernel_init=_conv_init(boxed),
                bias_init=_named(nn.initializers.zeros, ("conv_out",), boxed),
                name=name,
            )

        h = x
        for i in range(n):
            features = self.width * 2**i
            h = activate(layer(conv(features, 3, 1, f"conv_{i}a"), h), 2 * i)
            h = activate(layer(conv(features, 4, 2, f"conv_{i}b"), h), 2 * i + 1)
        h = activate(layer(conv(self.width * 2**n, 3, 1, "conv_out"), h), 2 * n)
        features = h.reshape(h.shape[0], math.prod(h.shape[1:]))
        dense = nn.Dense(
            1,
            kernel_init=_named(nn.initializers.normal(0.02), ("conv_out", None), boxed),
            bias_init=_named(nn.initializers.zeros, (None,), boxed),
            name="logit",
        )
        logit = layer(dense, features)[:, 0]
        if self.num_classes:
            embed = nn.Embed(
                self.num_classes,
                features.shape[-1],
                embedding_init=_named(nn.initializers.normal(0.02), (None, "conv_out"), boxed),
                name="label_project",
            )
            if spectral:
                # The projection's embedding is a matrix too; normalize it like the rest.
                weights = nn.SpectralNorm(embed, collection_name=SPECTRAL)(
                    labels, update_stats=update_stats
                )
            else:
                weights = embed(labels)
            logit = logit + jnp.sum(weights * features, axis=-1)
        return logit
