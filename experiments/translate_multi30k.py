"""English -> German translation on Multi30k (Elliott et al. 2016) with an encoder-decoder
Transformer, scored by sacreBLEU on the cased, untokenized references.

Variants:
  base  a small Transformer for 29k pairs (3 + 3 pre-LN layers, 256 wide, 4 heads, 1024-wide
        MLPs, dropout 0.1, label smoothing 0.1, joint 8k BPE), meant for a GPU: ~32 epochs.
  cpu   the same with 512-wide MLPs and ~7 epochs (1700 steps): about 20 minutes of training
        on 2 CPU cores (`python benchmarks/translate_multi30k.py` records its test BLEU).
  test  a seconds-long run on a slice of the data, for the test suite.

Give the local copy with `--config.data.path=../shared/data/multi30k`; an empty path downloads
`bentrevett/multi30k` through `datasets` (train, val, test_2016_flickr only).
"""

from __future__ import annotations

import ml_collections

from experiments.evals import translation_evals

VARIANTS = ("base", "cpu", "test")


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.task = "seq2seq"
    c.seed = 0

    c.data = ml_collections.ConfigDict()
    c.data.name = "multi30k"  # multi30k | wmt14
    c.data.path = ""  # folder of SPLIT.LANG[.gz] files; empty: the HF hub (needs internet)
    c.data.source_lang = "en"
    c.data.target_lang = "de"
    c.data.train_split = "train"
    c.data.eval_split = "val"  # BLEU on the test set: --config.data.eval_split=test_2016_flickr
    c.data.tokenizer = "bpe"  # one byte-level BPE vocabulary for both languages
    c.data.vocab_size = 8000
    c.data.tokenizer_from = ""  # a workdir whose tokenizer.json to use (default: init_from's)
    c.data.max_len = 64  # token slots per row on each side; longer training pairs are skipped
    c.data.train_examples = 0  # >0: only the first N training pairs
    c.data.eval_examples = 0  # >0: only the first N eval pairs

    c.model = ml_collections.ConfigDict()
    c.model.vocab_size = 0  # 0: taken from the tokenizer
    c.model.num_encoder_layers = 3
    c.model.num_decoder_layers = 3
    c.model.num_heads = 4
    c.model.emb_dim = 256
    c.model.mlp_dim = 1024
    c.model.dropout = 0.1  # embeddings and sublayer outputs (the paper's residual dropout)
    c.model.attention_dropout = 0.0  # attention weights (none in the paper)
    c.model.pos_encoding = "sinusoidal"  # sinusoidal | learned
    c.model.share_embeddings = True  # one table for source and target tokens
    c.model.tie_output = True  # the output projection is the target embedding
    c.model.pre_norm = True  # pre-LN (False: the paper's post-LN)
    c.model.use_bias = False
    c.model.activation = "relu"
    c.model.dtype = "float32"
    c.model.param_dtype = "float32"

    c.loss = ml_collections.ConfigDict()
    c.loss.label_smoothing = 0.1

    c.optim = ml_collections.ConfigDict()
    c.optim.schedule = "inverse_sqrt"
    c.optim.lr = 1e-3  # the peak, reached at the end of warm-up
    c.optim.min_lr = 0.0  # warmup_cosine only
    c.optim.warmup_steps = 500
    c.optim.decay_steps = 0  # warmup_cosine only
    c.optim.b1 = 0.9
    c.optim.b2 = 0.98
    c.optim.eps = 1e-9
    c.optim.weight_decay = 0.0
    c.optim.clip_norm = 1.0

    c.evals = translation_evals()
    c.train = ml_collections.ConfigDict()
    c.train.steps = 4000  # about 32 epochs at ~236 pairs per step
    c.train.batch_size = 64  # packed rows of data.max_len slots (about 3.7 pairs each)
    c.train.grad_accum = 1
    c.train.log_every = 100
    c.train.eval_every = 500
    c.train.eval_batch_size = 64  # rows
    c.train.checkpoint_every = 500
    c.train.keep_checkpoints = 2
    c.train.best_metric = "eval/loss"
    c.train.best_mode = "min"
    c.train.async_checkpoints = True
    c.train.progress_bar = True

    c.eval = ml_collections.ConfigDict()
    c.eval.beam_size = 4  # 1: greedy
    c.eval.length_penalty = 0.6  # GNMT's alpha; beam 4 and alpha 0.6 as Vaswani et al. 2017
    c.eval.decode_batch_size = 64  # sentences per decoding batch (each with beam_size beams)

    c.mesh = ml_collections.ConfigDict()
    c.mesh.data = -1
    c.mesh.fsdp = 1
    c.mesh.tensor = 1
    c.mesh.cpu_devices = -1

    c.sample = ml_collections.ConfigDict()
    c.sample.num_examples = 3  # eval sentences translated into samples/ at every eval
    return c


def get_config(variant: str = "base") -> ml_collections.ConfigDict:
    c = base_config()
    if variant == "cpu":
        # Measured on the shared 2-core VM: 1.17 s/step while the nanoGPT benchmark's step took
        # 1.8x its idle time, 2.07 s/step at 2.9x: ~0.65-0.7 s/step idle, so 1700 steps (~7
        # epochs) take about 19 minutes, plus about 1.5 minutes of evaluations.
        c.model.update(mlp_dim=512)
        c.optim.update(lr=1e-3, warmup_steps=300)
        c.train.update(steps=1700, batch_size=32, log_every=50)
        c.train.update(eval_every=500, checkpoint_every=500)
        c.evals.bleu.examples = 200  # the first 200 val sentences at each eval; test: genlab eval
    elif variant == "test":
        c.data.update(vocab_size=400, max_len=32, train_examples=600, eval_examples=24)
        c.model.update(num_encoder_layers=1, num_decoder_layers=1, num_heads=2)
        c.model.update(emb_dim=32, mlp_dim=64, dropout=0.0)
        c.optim.update(lr=1e-2, warmup_steps=5)
        c.train.update(steps=20, batch_size=8, log_every=5, eval_every=20, checkpoint_every=10)
        c.train.update(eval_batch_size=8, progress_bar=False)
        c.eval.update(beam_size=2, decode_batch_size=8)
        c.evals.bleu.examples = 8
        c.sample.num_examples = 2
    return c
