"""WMT14 English -> German with Transformer-base (Vaswani et al. 2017, table 3 "base"), for GPUs.

6 + 6 post-LN layers, 512 wide, 8 heads, 2048-wide ReLU MLPs with biases, sinusoidal positions,
residual and embedding dropout 0.1, label smoothing 0.1, one shared BPE vocabulary of ~37k for
both languages tied to the output projection, Adam(0.9, 0.98, 1e-9) with 4000 warm-up steps and
inverse-square-root decay at the paper's peak d^-0.5 * 4000^-0.5, about 25k source and 25k
target tokens per step, 100k steps; beam 4 with length penalty alpha 0.6.

Data: `wmt/wmt14` (config `de-en`) through `datasets` (needs internet; about 4.5M pairs).
Evaluation is on `test`, newstest2014, the split of the paper's 27.3 (as in Flax's WMT example),
so `genlab compare` puts that number beside the run; `val` is newstest2013 (the paper's dev
set: `--config.data.eval_split=val`, e.g. to choose checkpoints by it). Differences from
the paper: byte-level BPE from HF `tokenizers` (the paper used BPE on Moses-tokenized text),
packed rows instead of length-bucketed batches, outputs capped at data.max_len - 1 tokens (the
paper: input length + 50), no checkpoint averaging, and BLEU is sacreBLEU on detokenized text
(the paper's 27.3 is tokenized BLEU with compound splitting, typically about 1 point higher).
"""

from __future__ import annotations

import ml_collections

from experiments.translate_multi30k import base_config

VARIANTS = ("base",)


def get_config(variant: str = "base") -> ml_collections.ConfigDict:
    c = base_config()
    c.data.update(name="wmt14", path="", eval_split="test", vocab_size=37_000, max_len=256)
    c.model.update(num_encoder_layers=6, num_decoder_layers=6, num_heads=8, emb_dim=512)
    c.model.update(mlp_dim=2048, dropout=0.1, attention_dropout=0.0, activation="relu")
    c.model.update(pre_norm=False, use_bias=True, share_embeddings=True, tie_output=True)
    c.model.update(pos_encoding="sinusoidal", dtype="bfloat16")
    c.loss.label_smoothing = 0.1
    c.optim.update(schedule="inverse_sqrt", lr=512**-0.5 * 4000**-0.5, warmup_steps=4000)
    c.optim.update(b1=0.9, b2=0.98, eps=1e-9, weight_decay=0.0, clip_norm=0.0)
    # 96 rows x 256 slots, packed to ~97%: about 24k source and 24k target tokens per step.
    c.train.update(steps=100_000, batch_size=96, eval_batch_size=96, log_every=100)
    c.train.update(eval_every=5000, checkpoint_every=5000, keep_checkpoints=5)
    c.eval.update(beam_size=4, length_penalty=0.6, decode_batch_size=128)
    c.evals.bleu.examples = -1
    return c
