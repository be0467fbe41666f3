"""Llama-style decoders as options of the one Transformer LM (models/transformer.py::DecoderLM):
RMSNorm, a SwiGLU MLP, rotary positions with a 500,000 max timescale, grouped-query attention,
no biases.

Variants:
  1b    Llama-3.2-1B's shape: 16 layers, 2048 wide, 32 query heads sharing 8 key/value heads
        (head size 64), SwiGLU MLP 8192 wide, vocabulary 128,256, tied embeddings:
        1,235,814,400 parameters, the published 1.24B.
  8b    Llama-3-8B's shape: 32 layers, 4096 wide, 32 query / 8 key/value heads (head size 128),
        SwiGLU MLP 14,336 wide, vocabulary 128,256, untied output: 8,030,261,248 parameters, the
        published 8.03B.
  test  a few-second model of the same options on Tiny Shakespeare's characters (2 layers,
        64 wide, 4 query / 2 key/value heads) for the test suite; it samples like any char LM.

Shapes: the `config.json` of meta-llama/Llama-3.2-1B and meta-llama/Meta-Llama-3-8B on the
Hugging Face hub (hidden_size, intermediate_size, num_hidden_layers, num_attention_heads,
num_key_value_heads, vocab_size, rope_theta 500000, rms_norm_eps 1e-5, tie_word_embeddings); for
8B also the Llama 3 paper (Dubey et al. 2024, table 3, which rounds the vocabulary to 128K: the
released tokenizer adds 256 special tokens). The published counts hold the embedding table once;
the counts above are tested (tests/test_llama.py). Llama-3.2-1B also rescales its rotary
frequencies for contexts beyond 8,192 (`rope_scaling`, type llama3); that changes no parameter
and is not modelled here, so its context stays 8,192, Llama 3's pre-training length.

Data: 1b and 8b draw uniformly random tokens of Llama 3's vocabulary (data.source=synthetic), so
they build, compile and run without a tokenizer file; the loss stays near log(128256) = 11.76 and
only speed and memory count. Windows are 8,192 tokens; a step is 8 of them (65,536 tokens),
split over the devices by FSDP (mesh.fsdp=-1), every block rematerialised. 8b's float32
parameters and Adam moments alone are 96 GB (128 GB with the gradients): it needs several
accelerators. Llama's own batch was 4M tokens (train.batch_size=512, with train.grad_accum to fit
memory); the LM task evaluates train.batch_size windows in one pass, so keep evals rare there.
These sizes are planned, not yet measured on a GPU.

Optimizer: Llama 2's pre-training recipe (Touvron et al. 2023, section 2.2 and table 1): AdamW
with b1 0.9, b2 0.95, eps 1e-5, weight decay 0.1, gradient clipping at 1.0, 2,000 warm-up steps,
then cosine decay to 10% of the peak, here over 500,000 steps (its 7B model's 2T tokens at 4M per
step); the peak 3e-4 is both its 7B model's and Llama 3 8B's (Llama 3 paper, table 3). train.steps
is a throughput run's; the schedule is the recipe's regardless. Compute in bfloat16, parameters
and optimizer state in float32.
"""

from __future__ import annotations

import ml_collections

from experiments.shakespeare_char import base_config

VARIANTS = ("1b", "8b", "test")

LLAMA3_VOCAB = 128_256
# (num_layers, emb_dim, num_heads, num_kv_heads, mlp_dim, tie_embeddings)
SHAPES = {
    "1b": (16, 2048, 32, 8, 8192, True),
    "8b": (32, 4096, 32, 8, 14_336, False),
    "test": (2, 64, 4, 2, 128, False),
}


def llama_model(c: ml_collections.ConfigDict, variant: str) -> None:
    """Set `c.model` to the variant's shape with Llama's block options."""
    num_layers, emb_dim, num_heads, num_kv_heads, mlp_dim, tie = SHAPES[variant]
    c.model.update(
        num_layers=num_layers,
        emb_dim=emb_dim,
        num_heads=num_heads,
        num_kv_heads=num_kv_heads,
        mlp_dim=mlp_dim,
        tie_embeddings=tie,
        norm="rmsnorm",
        mlp="swiglu",
        pos_encoding="rope",
        rope_theta=500_000.0,
        use_bias=False,
        dropout=0.0,
    )


def get_config(variant: str = "1b") -> ml_collections.ConfigDict:
    c = base_config()
    llama_model(c, variant)
    if variant == "test":
        c.data.block_size = 32
        c.optim.update(warmup_steps=5, decay_steps=40)
        c.train.update(steps=40, batch_size=8, log_every=10, eval_every=20, eval_batches=2)
        c.train.update(checkpoint_every=20, progress_bar=False)
        c.sample.num_tokens = 20
        return c
    c.data.update(name="synthetic", source="synthetic", vocab_size=LLAMA3_VOCAB, block_size=8192)
    c.model.update(dtype="bfloat16", param_dtype="float32", remat="full")
    c.optim.update(lr=3e-4, min_lr=3e-5, warmup_steps=2000, decay_steps=500_000)
    c.optim.update(b1=0.9, b2=0.95, eps=1e-5, weight_decay=0.1, clip_norm=1.0)
    c.train.update(steps=100, batch_size=8, log_every=10, eval_every=1000, eval_batches=2)
    c.train.update(checkpoint_every=1000, keep_checkpoints=1, progress_bar=False)
    c.mesh.update(data=1, fsdp=-1)
    return c
