"""GPT-2 small (124M) pretrained on OpenWebText from token shards: nanoGPT's train_gpt2 recipe.

Fetch GPT-2's tokenizer once, tokenize the corpus once (`genlab prepare`, train/data/prepare.py),
then train on the shards:

    hf download openai-community/gpt2 tokenizer.json --local-dir data/gpt2
    genlab prepare --config experiments/openwebtext_gpt2.py:124m --out data/owt_gpt2
    genlab train --config experiments/openwebtext_gpt2.py:124m --workdir runs/owt_gpt2 \\
        --config.data.path=data/owt_gpt2

Variants:
  124m  nanoGPT's config/train_gpt2.py on its train.py defaults: 12 layers, 12 heads, 768 wide,
        block 1024, no biases, no dropout, GPT-2's vocabulary padded from 50,257 to 50,304 (a
        multiple of 64), AdamW lr 6e-4 with 2,000 warm-up steps and cosine decay to 6e-5 over
        600,000 steps, weight decay 0.1, betas (0.9, 0.95), clipping at 1.0; bfloat16 compute,
        float32 parameters. A step is 491,520 tokens, as nanoGPT's (12 rows x 1024 tokens x 5
        micro-steps x 8 GPUs): train.batch_size=480 rows in train.grad_accum=5 micro-steps of 96,
        i.e. nanoGPT's 12 rows per device on 8 devices, which fit a 40 GB A100. On N devices keep
        12 rows per device per micro-step with grad_accum = 40 / N (40 on one GPU, 10 on 4); the
        batch of a step, and so the run, stays the same. 600,000 steps are 295B tokens.
        124,373,760 parameters (tested). Evaluation: 5 batches of 480 windows (2,400, as
        nanoGPT's 200 batches of 12), every 1,000 steps. The corpus is the hub's OpenWebText
        (`Skylion007/openwebtext`, parquet files; nanoGPT's data/openwebtext/prepare.py counts
        8,013,769 documents, 54 GB of download cache and 9,035,582,198 training tokens; with
        `data.prepare.streaming=true` it is tokenized as it downloads, storing nothing), 0.05% of
        documents held out for validation (nanoGPT's test_size=0.0005 and seed 2357, though not
        the same documents), tokenized with GPT-2's byte-level BPE (`data.tokenizer_path`: its
        tokenizer.json, from huggingface.co/openai-community/gpt2), <|endoftext|> after every
        document as nanoGPT appends it.
  test  a few-second model on shards the test suite prepares from a piece of Tiny Shakespeare
        (`--config.data.prepare.files=...`), with a 300-entry BPE fitted on its training split.

What to expect, from nanoGPT's README (karpathy/nanoGPT, "reproducing GPT-2"): "This will run for
about 4 days using PyTorch Distributed Data Parallel (DDP) and go down to loss of ~2.85. Now, a
GPT-2 model just evaluated on OWT gets a val loss of about 3.11, but if you finetune it it will
come down to ~2.85 territory (due to an apparent domain gap), making the two models ~match." Its
config file says the same: "config for training GPT-2 (124M) down to very nice loss of ~2.85 on 1
node of 8X A100 40GB". (Its baselines table: GPT-2 124M's own checkpoint scores 3.12 val loss on
OWT.) This recipe has not been run with genlab yet.
"""

from __future__ import annotations

import ml_collections

from experiments.shakespeare_char import base_config

VARIANTS = ("124m", "test")


def prepare_config() -> ml_collections.ConfigDict:
    """What `genlab prepare` reads: the corpus and how its shards are cut."""
    return ml_collections.ConfigDict(
        {
            "dataset": "Skylion007/openwebtext",  # a hub id, or "" for local files
            "dataset_config": "",  # the hub dataset's configuration, if it has several
            "split": "train",  # the hub split to read
            "files": "",  # local text / JSON lines / Parquet files (a path, glob, or a,b,c)
            "text_field": "text",
            "sample_by": "document",  # text files: a document per file, paragraph or line
            "streaming": False,  # hub: tokenize while downloading, storing nothing
            "seed": 2357,  # which documents are held out for validation (nanoGPT's)
            "num_proc": 0,  # tokenizing processes; 0: one per core
            "shard_tokens": 100_000_000,  # tokens per shard file (200 MB of uint16)
            "eot": "",  # the end-of-document token; "": <|endoftext|> or </s>, the one it has
            "fit_documents": 0,  # bpe fitting: the first N training documents; 0: all
        }
    )


def get_config(variant: str = "124m") -> ml_collections.ConfigDict:
    c = base_config()
    c.data.name = "openwebtext"  # matches experiments/references.py
    c.data.source = "shards"
    c.data.path = ""  # the folder `genlab prepare --out` wrote
    c.data.tokenizer = "bpe"  # fitted by genlab prepare when data.tokenizer_path is empty
    c.data.tokenizer_path = "data/gpt2/tokenizer.json"  # GPT-2's, for genlab prepare
    c.data.vocab_size = 50304  # GPT-2's 50,257 ids padded to a multiple of 64 (nanoGPT)
    c.data.val_fraction = 0.0005  # of documents, held out by genlab prepare
    c.data.train_split = "train"  # the shards' splits a run trains and evaluates on
    c.data.eval_split = "val"
    c.data.block_size = 1024
    c.data.prepare = prepare_config()
    c.model.update(num_layers=12, num_heads=12, emb_dim=768, mlp_dim=3072, dropout=0.0)
    c.model.dtype = "bfloat16"
    c.optim.update(lr=6e-4, min_lr=6e-5, warmup_steps=2000, decay_steps=600_000)
    c.optim.update(b1=0.9, b2=0.95, weight_decay=0.1, clip_norm=1.0)
    c.train.update(steps=600_000, batch_size=480, grad_accum=5)
    c.train.update(log_every=10, eval_every=1000, eval_batches=5, checkpoint_every=1000)
    c.sample.num_tokens = 200
    if variant == "test":
        c.data.name = "tiny_shakespeare_shards"
        c.data.tokenizer_path = ""  # fit a BPE on the training split
        c.data.vocab_size = 300
        c.data.val_fraction = 0.1
        c.data.block_size = 32
        c.data.prepare.update(dataset="", sample_by="paragraph", num_proc=1, shard_tokens=2048)
        c.model.update(num_layers=2, num_heads=2, emb_dim=32, mlp_dim=64, dtype="float32")
        c.optim.update(lr=1e-2, min_lr=1e-3, warmup_steps=5, decay_steps=40)
        c.train.update(steps=40, batch_size=8, grad_accum=1, log_every=10)
        c.train.update(eval_every=20, eval_batches=2, checkpoint_every=10, progress_bar=False)
        c.sample.num_tokens = 20
    return c
