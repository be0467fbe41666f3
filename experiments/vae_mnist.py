"""VAEs on MNIST, set against Burda et al. 2015 (IWAE), Table 1.

Variants:
  iwae_paper  the paper's 1-stochastic-layer VAE (784-200-200-50, tanh; decoder mirrored),
              dynamically binarized MNIST, batch 20, Adam(0.9, 0.999, eps 1e-4), 3^i passes at
              learning rate 1e-3 * 10^(-i/7) for i = 0..7 (3280 passes), NLL by IWAE k=5000.
  two_layer   the same with the paper's two stochastic layers (100-100-100 / 50-50-50).
  static      iwae_paper on the fixed binarization of Larochelle & Murray (50k train).
  conv        a convolutional encoder/decoder on dynamically binarized MNIST.
  cpu         a shortened schedule that trains in about 10 minutes on 2 CPU cores.
  grey_cpu    cpu's model and schedule on the 8-bit grey levels (no binarization) with a
              discretized logistic decoder: its NLL is of the same discrete images as the DDPM
              bound and the pixel LM (experiments/pixel_lm_mnist.py), so bits/dim compare.
  test        a few-second model for the test suite.
"""

from __future__ import annotations

import ml_collections

from experiments.evals import image_evals

VARIANTS = ("iwae_paper", "two_layer", "static", "conv", "cpu", "grey_cpu", "test")
MNIST_TRAIN = 60_000


def iwae_stages(
    batch_size: int, train_examples: int, stages: int = 8, pass_scale: float = 1.0
) -> tuple[list[int], list[float]]:
    """Burda et al.'s schedule: stage i lasts 3^i passes at 1e-3 * 10^(-i/7)."""
    steps_per_pass = train_examples / batch_size
    lengths = [max(1, round(3**i * pass_scale * steps_per_pass)) for i in range(stages)]
    lrs = [1e-3 * 10 ** (-i / 7) for i in range(stages)]
    return lengths, lrs


def get_config(variant: str = "cpu") -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.task = "vae"
    c.seed = 0

    c.data = ml_collections.ConfigDict()
    c.data.name = "mnist"  # mnist | fashion_mnist | binarized_mnist
    c.data.path = ""  # folder of the local files (e.g. ../shared/data/mnist); empty: hub copy
    c.data.binarize = "dynamic"  # dynamic (fresh Bernoulli draw each step) | none
    c.data.scale = "unit"  # unit [0, 1] | symmetric [-1, 1] (grey levels)
    c.data.holdout_class = -1  # a label left out of training (anomaly detection); -1: none
    c.data.eval_split = "test"
    c.data.eval_examples = 0  # 0: the whole split

    c.model = ml_collections.ConfigDict()
    c.model.latents = (50,)  # one entry per stochastic layer
    c.model.hiddens = (200,)  # hidden width of the two tanh layers before each of them
    c.model.likelihood = "bernoulli"  # bernoulli | logistic (discretized, for grey levels)
    c.model.arch = "mlp"  # mlp | conv (between x and z1)
    c.model.conv_width = 32

    c.objective = ml_collections.ConfigDict()
    c.objective.name = "elbo"  # elbo | iwae
    c.objective.train_samples = 1  # k of the IWAE bound (and samples of the ELBO)

    c.eval = ml_collections.ConfigDict()
    c.eval.iwae_samples = 5000  # k of the importance-weighted NLL estimate
    c.eval.chunk = 500  # samples drawn at once (bounds memory)

    batch = 20
    lengths, lrs = iwae_stages(batch, MNIST_TRAIN)
    c.optim = ml_collections.ConfigDict()
    c.optim.schedule = "stages"
    c.optim.stage_steps = tuple(lengths)
    c.optim.stage_lrs = tuple(lrs)
    c.optim.lr = 1e-3
    c.optim.min_lr = 1e-3
    c.optim.warmup_steps = 0
    c.optim.decay_steps = 1
    c.optim.b1 = 0.9
    c.optim.b2 = 0.999
    c.optim.eps = 1e-4
    c.optim.weight_decay = 0.0
    c.optim.clip_norm = 0.0

    c.evals = image_evals()
    c.train = ml_collections.ConfigDict()
    c.train.steps = sum(lengths)
    c.train.batch_size = batch
    c.train.grad_accum = 1
    c.train.log_every = 1000
    c.train.eval_every = 300_000
    c.train.eval_batch_size = 500
    c.train.checkpoint_every = 100_000
    c.train.keep_checkpoints = 2
    c.train.best_metric = "eval/nll"
    c.train.best_mode = "min"
    c.train.async_checkpoints = True
    c.train.progress_bar = True

    c.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1, "cpu_devices": 1})

    if variant == "two_layer":
        c.model.latents, c.model.hiddens = (100, 50), (100, 50)
    elif variant == "static":
        c.data.name = "binarized_mnist"  # no hub copy: set data.path
        c.data.binarize = "none"
        lengths, lrs = iwae_stages(batch, 50_000)
        c.optim.stage_steps, c.optim.stage_lrs = tuple(lengths), tuple(lrs)
        c.train.steps = sum(lengths)
    elif variant == "conv":
        c.model.arch = "conv"
    elif variant in ("cpu", "grey_cpu"):
        c.train.batch_size = 100
        lengths, lrs = iwae_stages(100, MNIST_TRAIN, stages=5, pass_scale=0.6)  # 73 passes
        c.optim.stage_steps, c.optim.stage_lrs = tuple(lengths), tuple(lrs)
        c.train.steps = sum(lengths)
        c.train.log_every, c.train.eval_every = 500, 20_000
        c.train.checkpoint_every = 10_000
        c.eval.iwae_samples = 100  # during training; the result script re-scores with 5000
        if variant == "grey_cpu":
            c.data.update(binarize="none", scale="symmetric")
            c.model.likelihood = "logistic"
    elif variant == "test":
        c.train.batch_size = 20
        c.optim.schedule = "constant"
        c.train.steps, c.train.log_every, c.train.eval_every = 30, 10, 15
        c.train.checkpoint_every, c.train.eval_batch_size = 15, 50
        c.data.eval_examples = 100
        c.eval.iwae_samples, c.eval.chunk = 16, 8
        c.train.progress_bar = False
    elif variant != "iwae_paper":
        raise ValueError(f"unknown variant {variant}")
    return c
