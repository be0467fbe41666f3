"""Denoising diffusion (DDPM, Ho et al. 2020) on MNIST and Fashion-MNIST, 28x28 grey in [-1, 1].

Variants:
  unet        a DDPM U-Net sized for 28x28 (64 channels, levels 28/14/7, attention at 14 and
              7), the paper's process: T = 1000, linear betas 1e-4 to 0.02, epsilon-prediction,
              Adam 2e-4, EMA 0.9999; for an accelerator.
  dit         the same process with a DiT denoiser (patch 2, 6 blocks, width 256, 4 heads).
  cpu         a small U-Net (16/32/64 channels at 28/14/7, one block per level, attention at
              7x7; 0.7M parameters) that trains in about 15 minutes on 2 CPU cores (3,000
              steps at batch 64); evaluated with 50 DDIM steps.
  dit_cpu     a small DiT (patch 4, 6 blocks, width 128) at about the cpu variant's cost.
  test        a few-second model for the test suite.
  fashion_*   any of the above on Fashion-MNIST.
Class-conditional training with classifier-free guidance: `--config.model.num_classes=10`
(labels dropped with probability `model.label_dropout`), sampled with `eval.guidance`.
"""

from __future__ import annotations

import ml_collections

from experiments.evals import image_evals

BASE_VARIANTS = ("unet", "dit", "cpu", "dit_cpu", "test")
VARIANTS = BASE_VARIANTS + tuple(f"fashion_{v}" for v in BASE_VARIANTS)


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.task = "diffusion"
    c.seed = 0

    c.data = ml_collections.ConfigDict()
    c.data.name = "mnist"  # mnist | fashion_mnist | cifar10
    c.data.path = ""  # folder of the local files (e.g. ../shared/data/mnist); empty: hub copy
    c.data.random_flip = False  # random horizontal flips (CIFAR-10; digits are not symmetric)
    c.data.eval_examples = 1000  # test images for eval/loss and the bound (0: all)

    c.diffusion = ml_collections.ConfigDict()
    c.diffusion.timesteps = 1000  # T
    c.diffusion.schedule = "linear"  # linear (DDPM) | cosine (Nichol & Dhariwal 2021)
    c.diffusion.beta_start = 1e-4
    c.diffusion.beta_end = 0.02
    c.diffusion.prediction = "epsilon"  # epsilon | v (Salimans & Ho 2022)
    c.diffusion.variance = "large"  # reverse-step variance: large (beta) | small (beta-tilde)

    c.model = ml_collections.ConfigDict()
    c.model.arch = "unet"  # unet | dit
    c.model.channels = 64  # U-Net: channels of the first level
    c.model.channel_mults = (1, 2, 2)  # U-Net: one level per entry; 28 -> 14 -> 7
    c.model.num_res_blocks = 2
    c.model.attention_resolutions = (14, 7)  # U-Net: self-attention at these feature sizes
    c.model.norm_groups = 32  # U-Net: GroupNorm groups
    c.model.patch_size = 2  # DiT
    c.model.width = 256  # DiT
    c.model.depth = 6  # DiT blocks
    c.model.mlp_ratio = 4.0  # DiT
    c.model.num_heads = 4  # attention heads (U-Net and DiT)
    c.model.dropout = 0.1
    c.model.num_classes = 0  # > 0: class-conditional (classifier-free guidance)
    c.model.label_dropout = 0.1  # probability of training a step's label as "no label"
    c.model.ema_decay = 0.9999  # EMA of the weights, used for eval, samples and FID

    c.optim = ml_collections.ConfigDict()
    c.optim.schedule = "warmup_cosine"  # with min_lr = lr: linear warm-up, then constant
    c.optim.lr = 2e-4
    c.optim.min_lr = 2e-4
    c.optim.warmup_steps = 5000
    c.optim.decay_steps = 100_000
    c.optim.b1 = 0.9
    c.optim.b2 = 0.999
    c.optim.eps = 1e-8
    c.optim.weight_decay = 0.0
    c.optim.clip_norm = 1.0

    c.eval = ml_collections.ConfigDict()
    c.eval.sampler = "ddim"  # ddpm (ancestral, all T steps) | ddim
    c.eval.sample_steps = 100  # DDIM steps
    c.eval.eta = 0.0  # DDIM noise: 0 deterministic, 1 DDPM-like
    c.eval.guidance = 1.0  # classifier-free guidance scale (1: the conditional model alone)
    c.eval.clip_x0 = True  # clip predicted x_0 to [-1, 1] while sampling and in the bound
    c.eval.bpd_timesteps = 999  # KL terms of the bound: T - 1 is exact, fewer is stratified

    c.evals = image_evals()

    c.train = ml_collections.ConfigDict()
    c.train.steps = 100_000
    c.train.batch_size = 128
    c.train.grad_accum = 1
    c.train.log_every = 100
    c.train.eval_every = 10_000
    c.train.eval_batch_size = 250
    c.train.checkpoint_every = 5000
    c.train.keep_checkpoints = 2
    c.train.best_metric = "eval/bpd"
    c.train.best_mode = "min"
    c.train.async_checkpoints = True
    c.train.progress_bar = True

    c.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1, "cpu_devices": -1})
    return c


def get_config(variant: str = "cpu") -> ml_collections.ConfigDict:
    c = base_config()
    fashion, base = variant.startswith("fashion_"), variant.removeprefix("fashion_")
    if fashion:
        c.data.name = "fashion_mnist"
    if base == "dit":
        c.model.arch = "dit"
    elif base == "cpu":
        c.model.update(channels=16, channel_mults=(1, 2, 4), num_res_blocks=1, norm_groups=4)
        c.model.update(attention_resolutions=(7,), dropout=0.0, ema_decay=0.999)
        c.optim.update(lr=1e-3, min_lr=1e-4, warmup_steps=200, decay_steps=3000)
        c.train.update(steps=3000, batch_size=64, eval_every=1000, checkpoint_every=500)
        c.eval.update(sample_steps=50, bpd_timesteps=50)
        c.data.eval_examples = 250
    elif base == "dit_cpu":
        c.model.update(arch="dit", patch_size=4, width=128, depth=6, dropout=0.0)
        c.model.ema_decay = 0.999
        c.optim.update(lr=1e-3, min_lr=1e-4, warmup_steps=200, decay_steps=3000)
        c.train.update(steps=3000, batch_size=64, eval_every=1000, checkpoint_every=500)
        c.eval.update(sample_steps=50, bpd_timesteps=50)
        c.data.eval_examples = 250
    elif base == "test":
        c.diffusion.timesteps = 50
        c.model.update(channels=8, channel_mults=(1, 2), num_res_blocks=1, norm_groups=4)
        c.model.update(attention_resolutions=(14,), num_heads=1, width=32, depth=2, patch_size=7)
        c.model.update(dropout=0.0, ema_decay=0.99)
        c.optim.update(lr=2e-3, min_lr=2e-3, warmup_steps=0, decay_steps=1)
        c.train.update(steps=20, batch_size=16, log_every=5, eval_every=10, eval_batch_size=16)
        c.train.update(checkpoint_every=10, progress_bar=False)
        c.eval.update(sample_steps=5, bpd_timesteps=4)
        c.data.eval_examples = 32
    elif base != "unet":
        raise ValueError(f"unknown variant {variant}")
    return c
