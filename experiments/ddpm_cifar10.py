"""DDPM on CIFAR-10, as Ho et al. (2020) trained it (for accelerators).

The paper's CIFAR-10 model and recipe: a U-Net of 35.7M parameters (128 channels, multipliers
1, 2, 2, 2 over 32/16/8/4, two residual blocks per level, self-attention at 16x16, dropout 0.1),
T = 1000 with linear betas from 1e-4 to 0.02, epsilon-prediction (L_simple), Adam at 2e-4 after
5,000 warm-up steps, gradient clipping at 1, batch 128, random horizontal flips, 800k steps, EMA
decay 0.9999, sampling with the reverse-step variance beta_t. Paper: FID 3.17 (50k samples
against the training set), NLL <= 3.75 bits/dim. CIFAR-10 comes from the hub (`uoft-cs/cifar10`)
unless `data.path` is set.

Variants: `paper` (the above), `test` (the same shapes for counting, a few seconds to train).
"""

from __future__ import annotations

import ml_collections

from experiments.diffusion_mnist import base_config

VARIANTS = ("paper", "test")


def get_config(variant: str = "paper") -> ml_collections.ConfigDict:
    c = base_config()
    c.data.name = "cifar10"
    c.data.random_flip = True
    c.data.eval_examples = 1000
    c.model.update(channels=128, channel_mults=(1, 2, 2, 2), num_res_blocks=2, dropout=0.1)
    c.model.update(attention_resolutions=(16,), norm_groups=32, num_heads=1, ema_decay=0.9999)
    c.optim.update(lr=2e-4, min_lr=2e-4, warmup_steps=5000, decay_steps=800_000, clip_norm=1.0)
    c.train.update(steps=800_000, batch_size=128, eval_every=50_000, checkpoint_every=10_000)
    c.eval.update(sampler="ddpm")
    if variant == "test":
        c.train.update(steps=2, batch_size=8, eval_every=2, eval_batch_size=8, progress_bar=False)
        c.data.eval_examples = 8
        c.eval.update(sampler="ddim", sample_steps=2, bpd_timesteps=2)
    elif variant != "paper":
        raise ValueError(f"unknown variant {variant}")
    return c
