"""A decoder LM's data: its tokenizer and token windows of the splits a command asked for.

`data.source=text` reads a corpus (`train/data/text.py`) and tokenizes it with the run's tokenizer
(`train/data/run_tokenizer.py`); `shards` reads the token shards `genlab prepare` wrote to
`data.path` (`train/data/shards.py`), with their tokenizer, never loading the corpus; `synthetic`
draws uniformly random tokens for throughput runs (no file, no tokenizer, no samples: the loss
stays near log(vocab_size)).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import jax
import ml_collections
import numpy as np

from train.data import tokenizers
from train.data.pixels import PixelRows
from train.data.run_tokenizer import run_tokenizer
from train.data.shards import ShardFolder, ShardWindows
from train.data.splits import EVAL, TRAIN, Splits, loaded
from train.data.text import TokenWindows, load_text, split_tokens
from train.errors import UserError
from train.transfer import parse_source

SYNTHETIC_TOKENS = 1 << 20  # per split; windows are drawn from it at random
# each has batch(seed, step, batch_size, process, count)
Windows = TokenWindows | ShardWindows | PixelRows


@dataclass
class LMData:
    """The vocabulary and, when loaded, the windows of each split. `tokens_per_char` (of the
    validation text) turns a loss per token into bits per character. The pixel LM
    (train/tasks/pixel_lm.py) holds its image rows here too."""

    vocab_size: int
    tokenizer: tokenizers.Tokenizer | None = None  # None: synthetic tokens
    train: Windows | None = None
    val: Windows | None = None
    tokens_per_char: float | None = None

    def train_windows(self) -> Windows:
        return loaded(self.train, TRAIN, "the LM's token windows")

    def val_windows(self) -> Windows:
        return loaded(self.val, EVAL, "the LM's token windows")


def load_lm_data(config: ml_collections.ConfigDict, workdir: Path | None, splits: Splits) -> LMData:
    """The data `data.source` names, for `splits`."""
    source = config.data.get("source", "text")  # its allowed values: launch/validate
    if source == "synthetic":
        return _synthetic(config, splits)
    if source == "shards":
        return _shards(config, workdir, splits)
    return _text(config, workdir, splits)


def _synthetic(config: ml_collections.ConfigDict, splits: Splits) -> LMData:
    d = config.data
    if d.vocab_size < 2:
        raise UserError(
            f"data.vocab_size={d.vocab_size}: data.source=synthetic needs the vocabulary "
            "size (at least 2), e.g. 50304 for GPT-2"
        )
    count = max(SYNTHETIC_TOKENS, 4 * (d.block_size + 1))
    rng = np.random.default_rng(config.seed)
    train = TokenWindows(rng.integers(0, d.vocab_size, count, np.int32), d.block_size)
    val = TokenWindows(rng.integers(0, d.vocab_size, count, np.int32), d.block_size)
    return LMData(
        d.vocab_size,
        train=train if TRAIN in splits else None,
        val=val if EVAL in splits else None,
    )


def _shards(config: ml_collections.ConfigDict, workdir: Path | None, splits: Splits) -> LMData:
    """The shards in `data.path` and their tokenizer, which must be the run's (resumed, or taken
    from `data.tokenizer_from` / `init_from`). Only `genlab sample` (no splits) of a run that
    saved its tokenizer works without the shards."""
    d = config.data
    own = workdir / tokenizers.TOKENIZER_FILE if workdir is not None else None
    if not splits and own is not None and own.is_file():
        tokenizer = tokenizers.load_tokenizer(workdir)
        return LMData(_model_vocab(d, tokenizer), tokenizer)
    folder = ShardFolder(d.path)
    for origin, source in _tokenizer_sources(config, workdir):
        folder.check_tokenizer(tokenizers.load_tokenizer(source, origin), origin)
    data = LMData(_model_vocab(d, folder.tokenizer), folder.tokenizer)
    train_split, eval_split = d.get("train_split", "train"), d.get("eval_split", "val")
    if TRAIN in splits:
        data.train = folder.windows(train_split, d.block_size, "data.train_split")
    if EVAL in splits:
        data.val = folder.windows(eval_split, d.block_size, "data.eval_split")
        data.tokens_per_char = folder.tokens_per_char(eval_split, "data.eval_split")
    return data


def _tokenizer_sources(
    config: ml_collections.ConfigDict, workdir: Path | None
) -> list[tuple[str, Path]]:
    """The folders whose tokenizer a shards run must share: its own workdir's (resuming), then
    `data.tokenizer_from`'s and `init_from`'s (their parameters mean something only with their
    token ids); (what names each, folder)."""
    sources = []
    if workdir is not None and (workdir / tokenizers.TOKENIZER_FILE).is_file():
        sources.append((f"the run in --workdir {workdir}", workdir))
    explicit = config.data.get("tokenizer_from", "")
    if explicit:
        sources.append((f"data.tokenizer_from={explicit!r}", Path(explicit)))
    source = config.get("init_from", "")
    if source:
        folder, _ = parse_source(source)
        if (folder / tokenizers.TOKENIZER_FILE).is_file():
            sources.append((f"init_from={source!r}", folder))
    return sources


def _model_vocab(d: ml_collections.ConfigDict, tokenizer: tokenizers.Tokenizer) -> int:
    """The model's vocabulary for shards: the tokenizer's, or `data.vocab_size` rows when that is
    larger (GPT-2's 50,257 ids padded to 50,304, a multiple of 64, as nanoGPT does for speed)."""
    wanted = d.get("vocab_size", 0)
    if wanted and wanted < tokenizer.vocab_size:
        raise UserError(
            f"data.vocab_size={wanted} is smaller than the shards' tokenizer "
            f"({tokenizer.vocab_size} entries); allowed: 0 (the tokenizer's size) or at least "
            f"{tokenizer.vocab_size} (the rows beyond it pad the embedding)"
        )
    return wanted or tokenizer.vocab_size


def _text(config: ml_collections.ConfigDict, workdir: Path | None, splits: Splits) -> LMData:
    """A corpus, its tokenizer (fitted, or reused from a run) and its token windows."""
    d = config.data
    fit = None
    if splits:
        text = load_text(d.path)
        val_path = d.get("val_path", "")
        if val_path:
            train_text, val_text = text, load_text(val_path)
        else:
            train_text, val_text = split_tokens(text, d.val_fraction)
        # A subword tokenizer learns from the training text only; the char vocabulary is
        # the whole file's (nanoGPT's 65 characters for Tiny Shakespeare).
        fit_text = text if d.tokenizer == "char" else train_text
        fit = functools.partial(
            tokenizers.fit_tokenizer, d.tokenizer, fit_text, d.get("vocab_size", 0)
        )
    tokenizer = run_tokenizer(config, workdir, fit)
    data = LMData(tokenizer.vocab_size, tokenizer)
    if TRAIN in splits:
        train_tokens = tokenizer.encode(_restrict(d, tokenizer, train_text, d.path))
        data.train = TokenWindows(train_tokens, d.block_size)
    if splits:
        val_text = _restrict(d, tokenizer, val_text, val_path or d.path)
        val_tokens = tokenizer.encode(val_text)
        data.tokens_per_char = len(val_tokens) / max(len(val_text), 1)
        if EVAL in splits:
            data.val = TokenWindows(val_tokens, d.block_size)
    return data


def _restrict(
    d: ml_collections.ConfigDict, tokenizer: tokenizers.Tokenizer, text: str, source: str
) -> str:
    """`text` with the characters a reused char vocabulary lacks handled as
    `data.unknown_chars` says (subword tokenizers handle unseen text themselves)."""
    policy = d.get("unknown_chars", "error")
    if not isinstance(tokenizer, tokenizers.CharTokenizer):
        tokenizers.check_unknown_char_policy(policy)
        return text
    replacement = d.get("unknown_replacement", " ")
    text, unknown = tokenizers.restrict_to_alphabet(text, tokenizer.chars, policy, replacement)
    if unknown and policy != "error" and jax.process_index() == 0:
        verb = "dropped" if policy == "drop" else f"replaced by {replacement!r}"
        print(
            f"data: {sum(unknown.values())} characters of {source} outside the "
            f"vocabulary {verb}: {''.join(unknown)!r}",
            flush=True,
        )
    return text
