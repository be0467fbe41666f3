"""GPT-2 small (124M) at its real shape on synthetic tokens: the throughput and MFU run.

Variants:
  124m  12 layers, 12 heads, 768 wide, block 1024, GPT-2's padded vocabulary of 50,304 (124.4M
        parameters, tied embeddings, no biases), batch 16, no dropout, bfloat16 compute with
        float32 parameters, cuDNN flash attention where available. Tokens are uniformly random
        (data.source=synthetic): the loss stays near log(50304) = 10.8, only speed counts.
  test  a few-second model of the same code path for the test suite.

`python benchmarks/gpu_lm.py` runs `124m` beside PyTorch on the same GPU.
"""

from __future__ import annotations

import ml_collections

from experiments.shakespeare_char import base_config

VARIANTS = ("124m", "test")


def get_config(variant: str = "124m") -> ml_collections.ConfigDict:
    c = base_config()
    c.data.name = "synthetic"
    c.data.source = "synthetic"
    c.data.vocab_size = 50304
    c.data.block_size = 1024
    c.model.update(num_layers=12, num_heads=12, emb_dim=768, mlp_dim=3072, dropout=0.0)
    c.model.dtype = "bfloat16"
    c.optim.update(lr=6e-4, min_lr=6e-5, warmup_steps=10, decay_steps=1000, b2=0.95)
    c.train.update(steps=100, batch_size=16, log_every=10, eval_every=1000, eval_batches=2)
    c.train.update(checkpoint_every=1000, keep_checkpoints=1, progress_bar=False)
    if variant == "test":
        c.data.vocab_size = 96
        c.data.block_size = 32
        c.model.update(num_layers=2, num_heads=2, emb_dim=32, mlp_dim=64, dtype="float32")
        c.train.update(steps=6, batch_size=8, log_every=2, eval_every=6, checkpoint_every=6)
    return c
