"""Character-level decoder-only Transformer on Tiny Shakespeare.

Variants:
  cpu   nanoGPT's CPU recipe (4 layers, 4 heads, 128 wide, block 64, batch 12, 2000 iters).
  gpu   nanoGPT's train_shakespeare_char recipe (6 layers, 6 heads, 384 wide, block 256, batch 64).
  test  a few-second model for the test suite.
"""

from __future__ import annotations

import ml_collections

VARIANTS = ("cpu", "gpu", "test")


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.task = "lm"
    c.seed = 1337

    c.data = ml_collections.ConfigDict()
    c.data.name = "tiny_shakespeare"  # matches experiments/references.py
    c.data.path = ""  # a local text file; empty fetches Tiny Shakespeare once (needs internet)
    c.data.tokenizer = "char"
    c.data.vocab_size = 0  # subword tokenizers only: entries to learn (char: the text's characters)
    c.data.val_fraction = 0.1
    c.data.block_size = 64

    c.model = ml_collections.ConfigDict()
    c.model.vocab_size = 0  # 0: taken from the tokenizer
    c.model.num_layers = 4
    c.model.num_heads = 4
    c.model.emb_dim = 128
    c.model.mlp_dim = 512
    c.model.dropout = 0.0
    c.model.pos_encoding = "learned"  # learned | sinusoidal | rope
    c.model.tie_embeddings = True
    c.model.use_bias = False
    c.model.activation = "gelu_tanh"  # gelu_tanh | gelu | relu
    c.model.dtype = "float32"  # compute dtype: float32 | bfloat16
    c.model.param_dtype = "float32"

    c.optim = ml_collections.ConfigDict()
    c.optim.lr = 1e-3
    c.optim.min_lr = 1e-4
    c.optim.warmup_steps = 100
    c.optim.decay_steps = 2000  # cosine decay ends here (counted from step 0, warm-up included)
    c.optim.b1 = 0.9
    c.optim.b2 = 0.99
    c.optim.eps = 1e-8
    c.optim.weight_decay = 0.1  # applied to matrices only
    c.optim.clip_norm = 1.0  # 0 disables clipping

    c.train = ml_collections.ConfigDict()
    c.train.steps = 2000
    c.train.batch_size = 12  # global batch, all devices and hosts together
    c.train.grad_accum = 1  # micro-batches per step; batch_size must divide evenly
    c.train.log_every = 50
    c.train.eval_every = 250
    c.train.eval_batches = 20
    c.train.checkpoint_every = 500
    c.train.keep_checkpoints = 2  # newest N, plus the best by `best_metric`
    c.train.best_metric = "eval/loss"
    c.train.best_mode = "min"
    c.train.async_checkpoints = True
    c.train.progress_bar = True

    c.mesh = ml_collections.ConfigDict()
    c.mesh.data = -1  # -1: all devices left over by the other axes
    c.mesh.fsdp = 1
    c.mesh.tensor = 1
    # On CPU only: split the CPU into this many XLA devices (-1: one per core, as many as divide
    # the batch), which then run data-parallel. XLA runs this model's small ops one at a time,
    # so one device per core is about 1.5x faster than one device using every core.
    c.mesh.cpu_devices = -1

    c.sample = ml_collections.ConfigDict()
    c.sample.prompt = "\n"
    c.sample.num_tokens = 200
    c.sample.temperature = 0.8
    c.sample.top_k = 0  # 0: no top-k filter
    c.sample.top_p = 1.0  # 1.0: no nucleus filter
    c.sample.seed = 0
    return c


def get_config(variant: str = "cpu") -> ml_collections.ConfigDict:
    c = base_config()
    if variant == "gpu":
        c.data.block_size = 256
        c.model.update(num_layers=6, num_heads=6, emb_dim=384, mlp_dim=1536, dropout=0.2)
        c.model.dtype = "bfloat16"
        c.optim.update(lr=1e-3, min_lr=1e-4, warmup_steps=100, decay_steps=5000)
        c.train.update(steps=5000, batch_size=64, eval_every=250, eval_batches=200)
        c.train.checkpoint_every = 1000
    elif variant == "test":
        c.data.block_size = 32
        c.model.update(num_layers=2, num_heads=2, emb_dim=32, mlp_dim=64)
        c.optim.update(warmup_steps=5, decay_steps=40)
        c.train.update(steps=40, batch_size=8, log_every=10, eval_every=20, eval_batches=2)
        c.train.update(checkpoint_every=10, progress_bar=False)
        c.sample.num_tokens = 20
    return c
