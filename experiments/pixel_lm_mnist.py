"""An autoregressive Transformer over MNIST's 784 pixels (ImageGPT-style), for likelihoods.

The LM family's Transformer and training as the `pixel_lm` task (train/tasks/pixel_lm.py, data
in train/data/pixels.py): every grey level is a token (256 of them, plus a start token), an
image is one 784-token window in raster order, and the held-out loss is the exact NLL of the
8-bit test images, reported as `eval/bpd` (bits per dimension), the convention of the VAE's
discretized decoder and the DDPM bound. Samples are drawn pixel by pixel with the KV cache, as
PNG grids (`genlab sample`) and for FID (`genlab eval --metric fid`), as the image families'.

    genlab train --config experiments/pixel_lm_mnist.py:cpu --workdir runs/pixel_lm \\
        --config.data.path=../shared/data/mnist
    genlab eval --workdir runs/pixel_lm --metric heldout \\
        --config.train.batch_size=100 --config.train.eval_batches=100

Variants:
  cpu   4 layers, 4 heads, 128 wide, batch 8 images (6,272 tokens), 1,200 steps, AdamW
        at 2e-3 with cosine decay; sized for about half an hour on 2 CPU cores. Evaluation
        during training scores the first 320 test images; the command above scores all 10,000.
  test  a few-second model for the test suite.
"""

from __future__ import annotations

import ml_collections

from experiments.evals import image_evals
from experiments.shakespeare_char import base_config

VARIANTS = ("cpu", "test")


def get_config(variant: str = "cpu") -> ml_collections.ConfigDict:
    c = base_config()
    c.task = "pixel_lm"
    c.seed = 0
    c.data = ml_collections.ConfigDict(
        {
            "name": "mnist",  # any image set of train/data/images.py
            "path": "",  # folder of the local files (e.g. ../shared/data/mnist); empty: hub copy
            "eval_split": "test",
            "block_size": 784,  # one position per pixel
        }
    )
    c.model.update(num_layers=4, num_heads=4, emb_dim=128, mlp_dim=512, tie_embeddings=False)
    c.optim.update(lr=2e-3, min_lr=2e-4, warmup_steps=100, decay_steps=1200, weight_decay=0.0)
    c.train.update(steps=1200, batch_size=8, log_every=50, eval_every=600, eval_batches=40)
    c.train.update(checkpoint_every=250, best_metric="eval/bpd")
    c.evals = image_evals()
    c.sample = ml_collections.ConfigDict(
        {"num_images": 64, "temperature": 1.0, "top_k": 0, "top_p": 1.0, "seed": 0}
    )
    if variant == "test":
        c.model.update(num_layers=1, num_heads=2, emb_dim=16, mlp_dim=32)
        c.optim.update(lr=3e-3, warmup_steps=2, decay_steps=30)
        c.train.update(steps=30, batch_size=4, log_every=10, eval_every=15, eval_batches=2)
        c.train.update(checkpoint_every=15, progress_bar=False)
        c.sample.num_images = 4
    elif variant != "cpu":
        raise ValueError(f"unknown variant {variant}")
    return c
