"""SNGAN-sized GAN on CIFAR-10 (32x32 RGB, for accelerators).

`sngan`: the "standard CNN" of Miyato et al. 2018 (Table 3) with hinge loss and a spectrally
normalized discriminator: a generator from 128-d noise through 4x4x512 and three 4x4 stride-2
transposed convs (256, 128, 64 channels) to the image, a discriminator of 3x3 / 4x4-stride-2
conv pairs of 64, 128 and 256 channels and a 512-channel 3x3 conv, Adam(2e-4, 0.5, 0.999), one
discriminator step per generator step, batch 64, 100k generator updates, random flips, EMA
generator (3.8M generator and 2.9M discriminator parameters). For scale, the paper's ResNet
SNGAN reaches FID 21.7 on CIFAR-10; score with `genlab eval --metric fid --fid_split train
--num_samples 50000` to compare like with like (50k samples against the training set).
CIFAR-10 comes from the hub (`uoft-cs/cifar10`) unless `data.path` is set. `test` is a tiny
version for checks.
"""

from __future__ import annotations

import ml_collections

from experiments.gan_mnist import base_config

VARIANTS = ("sngan", "test")


def get_config(variant: str = "sngan") -> ml_collections.ConfigDict:
    c = base_config()
    c.data.name = "cifar10"
    c.data.random_flip = True
    c.model.update(latent_dim=128, g_width=64, d_width=64, upsample="transposed")
    c.model.update(d_norm="spectral", ema_decay=0.9999)
    c.loss.name = "hinge"
    c.train.update(steps=100_000, batch_size=64, eval_every=10_000, checkpoint_every=5000)
    if variant == "test":
        c.model.update(latent_dim=16, g_width=8, d_width=8)
        c.train.update(steps=2, batch_size=8, eval_every=2, eval_batch_size=8, progress_bar=False)
        c.data.eval_examples = 8
    elif variant != "sngan":
        raise ValueError(f"unknown variant {variant}")
    return c
