"""DCGAN-style GANs on MNIST and Fashion-MNIST (28x28 grey images scaled to [-1, 1]).

Variants:
  dcgan       non-saturating loss (Goodfellow et al. 2014), the DCGAN recipe of Radford et al.
              2016: Adam(2e-4, beta1 0.5), batch 64, batch norm in the generator.
  hinge_sn    hinge loss and a spectrally normalized discriminator (Miyato et al. 2018).
  cpu         a small hinge_sn (generator width 32, discriminator width 16, sub-pixel
              upsampling, 6,000 steps) that trains in about 15 minutes on 2 CPU cores. With
              the generator as narrow as the discriminator (16) the run collapsed to one blob
              after ~1,500 steps (the discriminator won outright); the wider generator keeps up.
  test        a few-second hinge_sn model for the test suite.
  fashion_*   any of the above on Fashion-MNIST (fashion_dcgan, fashion_hinge_sn, fashion_cpu).
Class-conditional training (label embedding in G, projection discriminator):
`--config.model.num_classes=10`. WGAN-GP: `--config.loss.name=wgan --config.loss.gp_weight=10
--config.loss.n_critic=5 --config.model.d_norm=none`; R1: `--config.loss.r1_gamma=10
--config.model.d_norm=spectral`.
"""

from __future__ import annotations

import ml_collections

from experiments.evals import image_evals

BASE_VARIANTS = ("dcgan", "hinge_sn", "cpu", "test")
VARIANTS = BASE_VARIANTS + tuple(f"fashion_{v}" for v in BASE_VARIANTS)


def optimizer(lr: float, b1: float, b2: float) -> ml_collections.ConfigDict:
    """Adam at a constant rate (train/optim.py reads these keys)."""
    return ml_collections.ConfigDict(
        {
            "schedule": "constant",
            "lr": lr,
            "min_lr": lr,
            "warmup_steps": 0,
            "decay_steps": 1,
            "b1": b1,
            "b2": b2,
            "eps": 1e-8,
            "weight_decay": 0.0,
            "clip_norm": 0.0,
        }
    )


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.task = "gan"
    c.seed = 0

    c.data = ml_collections.ConfigDict()
    c.data.name = "mnist"  # mnist | fashion_mnist | cifar10
    c.data.path = ""  # folder of the local IDX files (e.g. ../shared/data/mnist); empty: hub copy
    c.data.random_flip = False  # random horizontal flips of real images
    c.data.eval_examples = 1000  # test images the discriminator is evaluated on

    c.model = ml_collections.ConfigDict()
    c.model.latent_dim = 100
    c.model.g_width = 64  # channels of the generator's last feature map (doubling inwards)
    c.model.d_width = 64  # channels of the discriminator's first conv (doubling inwards)
    c.model.upsample = "transposed"  # transposed (DCGAN) | subpixel (much faster on CPU)
    c.model.d_norm = "batch"  # batch (DCGAN) | spectral (SNGAN) | none (for WGAN-GP, R1)
    c.model.num_classes = 0  # > 0: class-conditional G and projection discriminator
    c.model.ema_decay = 0.999  # EMA of the generator's weights, used for samples and FID

    c.loss = ml_collections.ConfigDict()
    c.loss.name = "nonsaturating"  # nonsaturating | hinge | wgan
    c.loss.n_critic = 1  # discriminator updates per generator update
    c.loss.r1_gamma = 0.0  # R1 penalty gamma/2 E||grad_x D(x_real)||^2; 0 disables
    c.loss.gp_weight = 0.0  # WGAN-GP penalty lambda E(||grad D(x_mix)|| - 1)^2; 0 disables

    c.optim_g = optimizer(2e-4, 0.5, 0.999)
    c.optim_d = optimizer(2e-4, 0.5, 0.999)

    c.evals = image_evals()

    c.train = ml_collections.ConfigDict()
    c.train.steps = 50_000  # generator updates
    c.train.batch_size = 64
    c.train.grad_accum = 1  # the GAN step takes whole batches (no micro-batching)
    c.train.log_every = 200
    c.train.eval_every = 5000
    c.train.eval_batch_size = 500
    c.train.checkpoint_every = 5000
    c.train.keep_checkpoints = 2
    c.train.best_metric = ""  # with evals.fid.every >= 0: "eval/fid" keeps the best checkpoint
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
    if base == "hinge_sn":
        c.loss.name = "hinge"
        c.model.d_norm = "spectral"
    elif base == "cpu":
        c.loss.name = "hinge"
        c.model.update(g_width=32, d_width=16, upsample="subpixel", d_norm="spectral")
        c.train.update(steps=6000, log_every=100, eval_every=500, checkpoint_every=500)
    elif base == "test":
        c.loss.name = "hinge"
        c.model.update(latent_dim=16, g_width=16, d_width=16)
        c.model.update(upsample="subpixel", d_norm="spectral")
        c.data.eval_examples = 32
        c.train.update(steps=20, batch_size=8, log_every=5, eval_every=10, eval_batch_size=16)
        c.train.update(checkpoint_every=10, progress_bar=False)
    elif base != "dcgan":
        raise ValueError(f"unknown variant {variant}")
    return c
