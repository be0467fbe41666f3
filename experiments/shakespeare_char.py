"""Character-level language models on Tiny Shakespeare: a decoder-only Transformer, a Mamba-style
selective SSM and an LSTM.

Variants:
  cpu   nanoGPT's CPU recipe (4 layers, 4 heads, 128 wide, block 64, batch 12, 2000 iters):
        804,096 parameters (65-character vocabulary, 8,192 of them the learned positions).
  gpu   nanoGPT's train_shakespeare_char recipe (6 layers, 6 heads, 384 wide, block 256, batch 64).
  ssm   the cpu recipe with 7 selective-SSM blocks, 128 wide (inner 256, state 16, conv 4,
        Δ rank 8): 824,704 parameters.
  lstm  the cpu recipe with a 2-layer LSTM, 224 wide: 819,392 parameters.
  test, ssm_test, lstm_test   few-second models (about 20k parameters) for the test suite.

Parameter counts are with Tiny Shakespeare's 65 characters and tied embeddings.
"""

from __future__ import annotations

import ml_collections

from experiments.evals import text_evals
from models.ssm import MAMBA_DEFAULTS

VARIANTS = ("cpu", "gpu", "test", "ssm", "lstm", "ssm_test", "lstm_test")
# Mamba keeps A (stored as log(-A)) and the D skip out of weight decay; D is a vector, which is
# never decayed anyway, but A's log is a matrix.
SSM_NO_DECAY = r"/(a_log|d_skip)$"


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.task = "lm"
    c.seed = 1337

    c.data = ml_collections.ConfigDict()
    c.data.name = "tiny_shakespeare"  # matches experiments/references.py
    c.data.source = "text"  # text | synthetic (random tokens of data.vocab_size, for speed runs)
    c.data.path = ""  # a local text file; empty fetches Tiny Shakespeare once (needs internet)
    c.data.tokenizer = "char"
    c.data.vocab_size = 0  # subword tokenizers only: entries to learn (char: the text's characters)
    c.data.val_fraction = 0.1
    c.data.val_path = ""  # a separate validation file (e.g. Multi30k's val.en.gz); empty: split
    c.data.block_size = 64
    # A run reusing another run's char vocabulary (data.tokenizer_from, or init_from's) may meet
    # characters it lacks: error | drop | replace (by data.unknown_replacement).
    c.data.unknown_chars = "error"
    c.data.unknown_replacement = " "
    c.data.tokenizer_from = ""  # a workdir whose tokenizer.json to use (default: init_from's)

    c.model = ml_collections.ConfigDict()
    c.model.arch = "transformer"  # transformer | ssm (Mamba-style) | lstm
    c.model.vocab_size = 0  # 0: taken from the tokenizer
    c.model.num_layers = 4
    c.model.num_heads = 4  # transformer only (as are mlp_dim, pos_encoding, use_bias, activation)
    c.model.emb_dim = 128  # the width of every layer, for each arch
    c.model.mlp_dim = 512
    c.model.dropout = 0.0
    c.model.pos_encoding = "learned"  # learned | sinusoidal | rope
    c.model.rope_theta = 10_000.0  # rope's max timescale (Llama 3: 500,000)
    c.model.tie_embeddings = True
    c.model.use_bias = False
    c.model.activation = "gelu_tanh"  # gelu_tanh | gelu | relu (the plain MLP's)
    # transformer only, Llama-style options (experiments/llama.py): the block norm (layernorm |
    # rmsnorm), the MLP (plain | swiglu: silu(gate) * up) and the key/value heads (0: num_heads;
    # fewer, a divisor of num_heads: grouped-query attention)
    c.model.norm = "layernorm"
    c.model.mlp = "plain"
    c.model.num_kv_heads = 0
    # transformer only: auto | xla | cudnn | reference. auto = cuDNN flash attention on a GPU in
    # bfloat16, XLA elsewhere. Only `reference` applies dropout to the attention weights; on the
    # fused paths model.dropout acts on embeddings and the attention/MLP outputs alone.
    c.model.attention_impl = "auto"
    c.model.remat = "none"  # transformer only: none | full | save_dots (what blocks keep)
    # ssm only: state_dim, conv_width, expand, dt_rank (models/ssm.py MAMBA_DEFAULTS says what)
    c.model.ssm = ml_collections.ConfigDict(MAMBA_DEFAULTS)
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
    c.optim.no_decay = ""  # regex over '/'-joined parameter names that are never decayed
    c.optim.clip_norm = 1.0  # 0 disables clipping
    c.optim.mu_dtype = ""  # dtype of Adam's first moment: "" (the parameters') | bfloat16 | float32

    c.evals = text_evals()
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
        # nanoGPT drops 20% of the attention weights too, which only the reference attention
        # does. On an H200 (benchmarks/results/gpu_lm.json) the fused cuDNN path without it ran
        # 6.5 ms/iter but overfitted early: best val 1.497 at step 1,250, against 1.4605 with it
        # (issue #12's run) and PyTorch's 1.480 at step 1,750 in the same session.
        c.model.attention_impl = "reference"
        c.optim.update(lr=1e-3, min_lr=1e-4, warmup_steps=100, decay_steps=5000)
        c.train.update(steps=5000, batch_size=64, eval_every=250, eval_batches=200)
        c.train.checkpoint_every = 1000
    elif variant == "ssm":
        c.model.update(arch="ssm", num_layers=7)
        c.optim.no_decay = SSM_NO_DECAY
    elif variant == "lstm":
        c.model.update(arch="lstm", num_layers=2, emb_dim=224)
    elif variant in ("test", "ssm_test", "lstm_test"):
        c.data.block_size = 32
        c.model.update(num_layers=2, num_heads=2, emb_dim=32, mlp_dim=64)
        c.optim.update(warmup_steps=5, decay_steps=40)
        c.train.update(steps=40, batch_size=8, log_every=10, eval_every=20, eval_batches=2)
        c.train.update(checkpoint_every=10, progress_bar=False)
        c.sample.num_tokens = 20
        if variant == "ssm_test":
            c.model.update(arch="ssm")
            c.optim.no_decay = SSM_NO_DECAY
            c.model.ssm.update(state_dim=4)
        elif variant == "lstm_test":
            c.model.update(arch="lstm")
    return c
