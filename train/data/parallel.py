"""A translation run's data: its joint tokenizer, the eval split (packed for the loss, as text
for BLEU) and, on first use, the training split packed per step (`genlab eval` never reads it).
"""

from __future__ import annotations

from pathlib import Path

import datasets
import ml_collections

from train.data import tokenizers
from train.data import translation as data
from train.data.run_tokenizer import run_tokenizer
from train.data.splits import EVAL, TRAIN, Splits, loaded
from train.errors import UserError


class ParallelData:
    """The tokenizer, its special ids and the splits a command asked for."""

    def __init__(
        self, config: ml_collections.ConfigDict, workdir: Path | None, splits: Splits
    ) -> None:
        self.config = config
        self.splits = splits
        self._train: datasets.Dataset | None = None  # read once, when first needed
        self._stream: data.PackedStream | None = None
        # Only a fit reads the training text here: a run with a tokenizer never does.
        fit = self._fit if splits else None
        self.tokenizer = run_tokenizer(config, workdir, fit)
        if not isinstance(self.tokenizer, tokenizers.SubwordTokenizer):
            raise UserError(  # only a workdir that some LM run wrote holds one
                f"{workdir / tokenizers.TOKENIZER_FILE} is a {self.tokenizer.kind} tokenizer, "
                "without pad/bos/eos tokens; allowed for seq2seq: bpe (is --workdir an LM run?)"
            )
        t = self.tokenizer
        self.specials = data.Specials(pad=t.pad_id, bos=t.bos_id, eos=t.eos_id)
        self.eval_sources: list[str] | None = None
        self.eval_references: list[str] | None = None
        if EVAL in splits:
            self._load_eval(config.data)

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    def _fit(self) -> tokenizers.Tokenizer:
        """One joint vocabulary for both languages, learnt from the training split."""
        d = self.config.data
        train = self._train_pairs()
        texts = list(train["source"]) + list(train["target"])
        return tokenizers.fit_tokenizer(d.tokenizer, texts, d.vocab_size)

    def _train_pairs(self) -> datasets.Dataset:
        """The cleaned training split (its first `data.train_examples` lines when > 0)."""
        if self._train is None:
            d = self.config.data
            self._train = data.load_pairs(
                d.name,
                d.path,
                d.train_split,
                d.source_lang,
                d.target_lang,
                d.train_examples,
                key="data.train_split",
            )
        return self._train

    def _load_eval(self, d: ml_collections.ConfigDict) -> None:
        """The eval split, tokenized and packed, and its text."""
        evaluation = data.load_pairs(
            d.name,
            d.path,
            d.eval_split,
            d.source_lang,
            d.target_lang,
            d.eval_examples,
            key="data.eval_split",
        )
        pairs = data.TokenPairs.encode(self.tokenizer, evaluation["source"], evaluation["target"])
        self.eval_sources = list(evaluation["source"])
        self.eval_references = list(evaluation["reference"])
        self.eval_rows, self.eval_too_long = data.eval_rows(pairs, d.max_len, self.specials)

    def eval_text(self) -> tuple[list[str], list[str]]:
        """The eval split's source sentences and their raw reference translations."""
        sources = loaded(self.eval_sources, EVAL, "translation")
        assert self.eval_references is not None
        return sources, self.eval_references

    def stream(self) -> data.PackedStream:
        """The training batches' source: the training split, tokenized, packed per step."""
        loaded(TRAIN if TRAIN in self.splits else None, TRAIN, "translation")
        if self._stream is None:
            d, t = self.config.data, self.tokenizer
            train = self._train_pairs()
            pairs = data.TokenPairs.encode(t, train["source"], train["target"])
            rows = self.config.train.batch_size
            per_step = data.pairs_per_step(pairs, rows, d.max_len)
            self._stream = data.PackedStream(pairs, rows, d.max_len, per_step, self.specials)
            self._train = None  # the token ids are all it needs from now on
        return self._stream
