"""`genlab prepare`: a text corpus tokenized once into token shards (train/data/shards.py).

The corpus comes through HF `datasets` (train/data/corpus.py). Its tokenizer is GPT-2's (or any
HF `tokenizer.json`) from `data.tokenizer_path`, else a run's (`data.tokenizer_from`), else a
byte-level BPE of `data.vocab_size` entries fitted on the training documents with the code runs
use (train/data/tokenizers.py). Documents are tokenized in parallel (`Dataset.map` over
`data.prepare.num_proc` processes; a streamed corpus is encoded in batches by the tokenizer's own
threads), each followed by the end-of-text token, and streamed into fixed-size shards.

A document goes to `val` when a hash of its number and `data.prepare.seed` falls below
`data.val_fraction`, so the split is the same however the corpus is batched, streamed or spread
over processes. Interrupted runs leave no shard that looks complete (train/data/shard_writer.py),
and running again on a finished folder with the same settings does nothing.
"""

from __future__ import annotations

import functools
import math
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import datasets
import ml_collections
import numpy as np
import pyarrow as pa
import tqdm

from train.data import shard_writer
from train.data.corpus import Corpus, open_corpus
from train.data.run_tokenizer import reused_tokenizer
from train.data.shards import (
    FORMAT,
    MANIFEST_FILE,
    VERSION,
    canonical_json,
    fingerprint,
    read_manifest,
    shard_dtype,
)
from train.data.tokenizers import (
    TOKENIZER_FILE,
    SubwordTokenizer,
    Tokenizer,
    check_settings,
    read_tokenizer_file,
)
from train.errors import UserError

SPLITS = ("train", "val")
EOT_TOKENS = ("<|endoftext|>", "</s>")  # GPT-2's, then genlab's fitted BPE's
BATCH_DOCUMENTS = 1000  # documents per map batch (fewer when that leaves a process idle)
CHUNK_BATCHES = 8  # map batches per process between progress updates
# data.prepare keys that change how the work is done but not the folder it makes
HOW_IT_RUNS = ("num_proc", "streaming")


def held_out(indices: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Whether each document (by its number in the corpus) is a validation document: a fixed hash
    of (seed, number), SplitMix64's output mix (Steele, Lea & Flood 2014), below `fraction`."""
    mask = (1 << 64) - 1
    z = np.asarray(indices, np.uint64) + np.uint64((seed * 0x9E3779B97F4A7C15) & mask)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) * 2.0**-53 < fraction


def settings(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """Everything the folder's contents depend on: equal settings make a rerun a no-op."""
    d = config.data
    chosen: dict[str, Any] = {k: v for k, v in d.prepare.to_dict().items() if k not in HOW_IT_RUNS}
    chosen["val_fraction"] = d.val_fraction
    if d.get("tokenizer_path", ""):
        chosen["tokenizer"] = {"path": d.tokenizer_path}
    elif d.get("tokenizer_from", "") or config.get("init_from", ""):
        chosen["tokenizer"] = {"from": d.get("tokenizer_from", "") or config.init_from}
    else:
        chosen["tokenizer"] = {"fit": d.tokenizer, "vocab_size": d.get("vocab_size", 0)}
    return chosen


def training_texts(
    corpus: Corpus, field: str, fraction: float, seed: int, limit: int
) -> Iterator[str]:
    """The training documents' text, streamed (the first `limit` of them; 0: all)."""
    number = taken = 0
    for batch in corpus.iter(batch_size=BATCH_DOCUMENTS):
        texts = batch[field]
        held = held_out(np.arange(number, number + len(texts)), fraction, seed)
        number += len(texts)
        for text, is_val in zip(texts, held, strict=True):
            if not is_val:
                yield text or ""
                taken += 1
                if taken == limit:
                    return


def given_tokenizer(config: ml_collections.ConfigDict) -> tuple[SubwordTokenizer, str] | None:
    """The shards' tokenizer when the config names one (module docstring) and where it came
    from; None when one is to be fitted, once the settings for that are checked. Nothing here
    reads the corpus, so a bad setting fails before any download."""
    d = config.data
    path = d.get("tokenizer_path", "")
    if path:
        file = Path(path) / TOKENIZER_FILE if Path(path).is_dir() else Path(path)
        if not file.is_file():
            raise UserError(
                f"data.tokenizer_path={path!r}: no such file; give an HF tokenizer.json (GPT-2's: "
                "huggingface.co/openai-community/gpt2) or leave it empty to fit data.tokenizer"
            )
        return _subword(read_tokenizer_file(file, f"data.tokenizer_path={path!r}"), str(file))
    reused = reused_tokenizer(config, None)
    if reused is not None:
        return _subword(reused, "data.tokenizer_from / init_from")
    check_settings(d.tokenizer, d.vocab_size)
    if d.tokenizer != "bpe":
        raise UserError(
            f"data.tokenizer={d.tokenizer!r}: genlab prepare writes subword shards; allowed: bpe "
            "(fitted here), or GPT-2's tokenizer.json as data.tokenizer_path"
        )
    return None


def _subword(tokenizer: Tokenizer, origin: str) -> tuple[SubwordTokenizer, str]:
    if not isinstance(tokenizer, SubwordTokenizer):
        raise UserError(
            f"{origin} gives a {tokenizer.kind} tokenizer; genlab prepare needs a subword one "
            "(bpe), which has an end-of-text token"
        )
    return tokenizer, origin


def fitted_tokenizer(
    config: ml_collections.ConfigDict, corpus: Corpus
) -> tuple[SubwordTokenizer, str]:
    """A byte-level BPE of `data.vocab_size` entries learnt from the training documents, by the
    code runs fit theirs with."""
    d, p = config.data, config.data.prepare
    texts = training_texts(corpus, p.text_field, d.val_fraction, p.seed, p.fit_documents)
    tokenizer = SubwordTokenizer.fit(texts, d.vocab_size)
    return tokenizer, f"bpe of {tokenizer.vocab_size} entries fitted on the train split"


def eot_token(tokenizer: SubwordTokenizer, wanted: str) -> tuple[str, int]:
    """The token that ends every document: `wanted`, or GPT-2's or genlab's end-of-text."""
    for token in (wanted,) if wanted else EOT_TOKENS:
        token_id = tokenizer.hf.token_to_id(token)
        if token_id is not None:
            return token, token_id
    tried = wanted or " or ".join(EOT_TOKENS)
    raise UserError(
        f"data.prepare.eot={wanted!r}: the tokenizer has no token {tried}; name one of its "
        "tokens to end each document"
    )


def encode(
    batch: dict[str, list],
    indices: list[int],
    *,
    field: str,
    tokenizer: SubwordTokenizer,
    eot: int,
    dtype: str,
    fraction: float,
    seed: int,
    offset: int,
) -> dict[str, list]:
    """One map batch of documents -> one row per split: its documents' ids end to end, each
    followed by `eot`, and their document and character counts."""
    texts = [text or "" for text in batch[field]]
    ids = tokenizer.encode_batch(texts)
    held = held_out(np.asarray(indices, np.int64) + offset, fraction, seed)
    end = np.asarray([eot], dtype)
    row: dict[str, list] = {}
    for split, mine in zip(SPLITS, (~held, held), strict=True):
        chosen = [i for i in range(len(texts)) if mine[i]]
        parts = [piece for i in chosen for piece in (ids[i], end)]
        tokens = np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype)
        row[split] = [tokens]
        row[f"{split}_documents"] = [len(chosen)]
        row[f"{split}_chars"] = [sum(len(texts[i]) for i in chosen)]
    return row


def tokenized(corpus: Corpus, work: functools.partial, num_proc: int) -> Iterator[pa.Table]:
    """`work` (encode with its settings) mapped over the corpus, as Arrow tables in corpus order.

    A stored corpus is mapped a chunk at a time over `num_proc` processes, so progress shows as
    it goes; a streamed one lazily, as it arrives.
    """
    if isinstance(corpus, datasets.IterableDataset):
        mapped = corpus.map(
            functools.partial(work, offset=0),
            batched=True,
            batch_size=BATCH_DOCUMENTS,
            with_indices=True,
            remove_columns=[work.keywords["field"]],
        )
        yield from mapped.with_format("arrow").iter(batch_size=CHUNK_BATCHES)
        return
    chunk = num_proc * CHUNK_BATCHES * BATCH_DOCUMENTS
    for start in range(0, len(corpus), chunk):
        part = corpus.select(range(start, min(start + chunk, len(corpus))))
        per_batch = min(BATCH_DOCUMENTS, math.ceil(len(part) / num_proc))
        mapped = part.map(
            functools.partial(work, offset=start),
            batched=True,
            batch_size=per_batch,
            with_indices=True,
            remove_columns=[work.keywords["field"]],
            num_proc=num_proc if num_proc > 1 else None,
            keep_in_memory=True,
        )
        yield from mapped.with_format("arrow").iter(batch_size=num_proc * CHUNK_BATCHES)


def _flat(table: pa.Table, column: str) -> np.ndarray:
    """A list column's values end to end (no copy)."""
    return table.column(column).combine_chunks().flatten().to_numpy(zero_copy_only=False)


def prepare(config: ml_collections.ConfigDict, out: Path) -> tuple[dict[str, Any], bool]:
    """Tokenize the corpus `config.data.prepare` names into shards in `out`; (the manifest,
    whether the folder was already done and nothing was written)."""
    if "prepare" not in config.data:
        raise UserError(
            "the config has no data.prepare (the corpus to tokenize); "
            "experiments/openwebtext_gpt2.py shows one"
        )
    wanted = settings(config)
    if (out / MANIFEST_FILE).is_file():
        manifest = read_manifest(out, f"--out {out}")
        if manifest.get("settings") == wanted:
            return manifest, True
        have = manifest.get("settings", {})
        changed = sorted(k for k in {*have, *wanted} if have.get(k) != wanted.get(k))
        raise UserError(
            f"--out {out} holds shards prepared with other settings ({', '.join(changed)} "
            "differ); give another --out, or delete that folder to prepare it anew"
        )
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a folder (new, or an unfinished one)")
    p = config.data.prepare
    given = given_tokenizer(config)
    corpus = open_corpus(p)
    out.mkdir(parents=True, exist_ok=True)
    shard_writer.remove_leftovers(out, SPLITS)
    started = time.time()
    tokenizer, origin = given or fitted_tokenizer(config, corpus)
    token, eot = eot_token(tokenizer, p.eot)
    dtype = shard_dtype(tokenizer.vocab_size)
    writers = {s: shard_writer.ShardWriter(out, s, dtype, p.shard_tokens) for s in SPLITS}
    work = functools.partial(
        encode,
        field=p.text_field,
        tokenizer=tokenizer,
        eot=eot,
        dtype=dtype.name,
        fraction=config.data.val_fraction,
        seed=p.seed,
    )
    num_proc = p.num_proc or os.cpu_count() or 1
    # Processes that each run the tokenizer's thread pool would oversubscribe the cores.
    threads = os.environ.get("TOKENIZERS_PARALLELISM")
    if num_proc > 1 and not isinstance(corpus, datasets.IterableDataset):
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
    try:
        # On a terminal only, and cleared when done: the summary (or an error) is then one line.
        bar = tqdm.tqdm(
            unit="tok", unit_scale=True, desc=f"prepare {out}", disable=None, leave=False
        )
        with bar:
            for table in tokenized(corpus, work, num_proc):
                for split, writer in writers.items():
                    tokens = _flat(table, split)
                    documents = int(table.column(f"{split}_documents").to_numpy().sum())
                    chars = int(table.column(f"{split}_chars").to_numpy().sum())
                    writer.add(tokens, documents, chars)
                    bar.update(len(tokens))
    finally:
        if threads is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = threads
    splits = {s: w.close() for s, w in writers.items()}
    if not splits["val"]["documents"] or not splits["train"]["documents"]:
        empty = "val" if not splits["val"]["documents"] else "train"
        documents = splits["train"]["documents"] + splits["val"]["documents"]
        raise UserError(
            f"data.val_fraction={config.data.val_fraction} left the {empty} split empty "
            f"({documents} documents in all); allowed: a fraction that leaves documents in both"
        )
    shard_writer.write_atomically(out / TOKENIZER_FILE, canonical_json(tokenizer))
    saved = read_tokenizer_file(out / TOKENIZER_FILE)  # what runs will read
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "dtype": dtype.name,
        "tokenizer": {
            "file": TOKENIZER_FILE,
            "sha256": fingerprint(saved),
            "kind": saved.kind,
            "vocab_size": saved.vocab_size,
            "origin": origin,
        },
        "eot": {"token": token, "id": eot, "placement": "after every document"},
        "source": {
            "files": p.files,
            "dataset": p.dataset,
            "dataset_config": p.dataset_config,
            "split": p.split,
            "text_field": p.text_field,
            "sample_by": p.sample_by,
            "streaming": p.streaming,
        },
        "splits": splits,
        "settings": wanted,
        "seconds": round(time.time() - started, 1),
    }
    shard_writer.write_manifest(out, manifest)
    return manifest, False
