"""Tokenizers that are saved with a run, so `eval` and `sample` decode exactly as training did.

`char` is one id per character (nanoGPT's). `bpe` is a subword tokenizer learned with the HF
`tokenizers` library over bytes (GPT-2's byte-level alphabet), so any text encodes without unknown
tokens and decodes back to exactly itself. It reserves ids 0-3 for the special tokens seq2seq
needs (`<pad>`, `<s>`, `</s>`, `<unk>`) and is saved as a plain HF `tokenizer.json`, which
`tokenizers.Tokenizer.from_file` reads as it is.

There is no `unigram`: the library's unigram trainer is not reproducible (its hash-map order
changes the last bits of the piece scores, and so their order, from one fit to the next, and the
ids of bytes absent from the text are numbered in random order), while BPE gives the same file
every time.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import tokenizers as hf
from tokenizers import decoders, models, pre_tokenizers, trainers

from train.errors import UserError

TOKENIZER_FILE = "tokenizer.json"


class Tokenizer(Protocol):
    kind: str
    vocab_size: int

    def encode(self, text: str) -> np.ndarray: ...

    def decode(self, ids: np.ndarray | list[int]) -> str: ...

    def to_json(self) -> dict: ...


UNKNOWN_CHAR_POLICIES = ("error", "drop", "replace")


class CharTokenizer:
    """One id per distinct character of the training text, in sorted order (as nanoGPT)."""

    kind = "char"

    def __init__(self, chars: str):
        self.chars = chars
        self.index = {c: i for i, c in enumerate(chars)}
        self.vocab_size = len(chars)

    @classmethod
    def fit(cls, text: str, vocab_size: int = 0) -> CharTokenizer:
        """`vocab_size` is ignored: the vocabulary is the text's characters."""
        return cls("".join(sorted(set(text))))

    def encode(self, text: str) -> np.ndarray:
        unknown = sorted(set(text) - self.index.keys())
        if unknown:
            raise UserError(
                f"text holds characters the char vocabulary lacks: {''.join(unknown)!r} "
                f"(allowed: {self.chars!r}); set data.unknown_chars=drop|replace to handle them"
            )
        return np.fromiter((self.index[c] for c in text), dtype=np.int32, count=len(text))

    def decode(self, ids: np.ndarray | list[int]) -> str:
        return "".join(self.chars[int(i)] for i in ids)

    def to_json(self) -> dict:
        return {"kind": self.kind, "chars": self.chars}


def check_unknown_char_policy(policy: str) -> None:
    if policy not in UNKNOWN_CHAR_POLICIES:
        raise UserError(
            f"data.unknown_chars={policy!r} is unknown; allowed: {', '.join(UNKNOWN_CHAR_POLICIES)}"
        )


def restrict_to_alphabet(
    text: str, alphabet: str, policy: str, replacement: str = " "
) -> tuple[str, dict[str, int]]:
    """Text whose characters all lie in `alphabet`, and how often each outside one occurred.

    A run that reuses another run's character vocabulary (fine-tuning) meets characters that
    vocabulary lacks: `error` leaves the text alone (the tokenizer then refuses it), `drop`
    removes them, `replace` writes `replacement` (itself in the alphabet) in their place.
    """
    check_unknown_char_policy(policy)
    known = set(alphabet)
    if policy == "replace" and (len(replacement) != 1 or replacement not in known):
        raise UserError(
            f"data.unknown_replacement={replacement!r} must be one character of the vocabulary "
            f"{alphabet!r}"
        )
    unknown = set(text) - known
    counts = {c: text.count(c) for c in sorted(unknown)}
    if policy == "error" or not unknown:
        return text, counts
    table = str.maketrans({c: (replacement if policy == "replace" else None) for c in unknown})
    return text.translate(table), counts


SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<unk>")  # ids 0, 1, 2, 3
DEFAULT_SUBWORD_VOCAB = 1024  # data.vocab_size=0 with a subword kind
MIN_SUBWORD_VOCAB = 256 + len(SPECIAL_TOKENS) + 1  # the byte alphabet, specials, one merge


class SubwordTokenizer:
    """Byte-level BPE from HF `tokenizers`, with pad/bos/eos/unk at ids 0-3."""

    kind = "bpe"

    def __init__(self, tokenizer: hf.Tokenizer):
        self.hf = tokenizer
        self.vocab_size = tokenizer.get_vocab_size()
        self.pad_id, self.bos_id, self.eos_id, self.unk_id = (
            tokenizer.token_to_id(t) for t in SPECIAL_TOKENS
        )

    @classmethod
    def fit(cls, text: str | Iterable[str], vocab_size: int = 0) -> SubwordTokenizer:
        """Learn `vocab_size` entries (0: a default of 1024; specials and bytes included) from
        one long text or texts (e.g. sentences, or documents streamed from a corpus)."""
        vocab_size = vocab_size or DEFAULT_SUBWORD_VOCAB
        check_settings(cls.kind, vocab_size)
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=list(SPECIAL_TOKENS),
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tokenizer = hf.Tokenizer(models.BPE(unk_token="<unk>"))
        # No prefix space and no normaliser: decoding gives back exactly the encoded text.
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        tokenizer.train_from_iterator(_pieces(text), trainer)
        return cls(tokenizer)

    def encode(self, text: str) -> np.ndarray:
        return np.asarray(self.hf.encode(text).ids, dtype=np.int32)

    def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
        """Each text's ids; encoded in parallel by the Rust library."""
        return [np.asarray(e.ids, np.int32) for e in self.hf.encode_batch(list(texts))]

    def decode(self, ids: np.ndarray | list[int]) -> str:
        """Text of `ids`, special tokens (padding, bos, eos) left out."""
        return self.hf.decode([int(i) for i in ids], skip_special_tokens=True)

    def to_json(self) -> dict:
        return json.loads(self.hf.to_str())


def _pieces(text: str | Iterable[str], lines_per_piece: int = 1000) -> Iterator[str]:
    """Training input in pieces of whole lines, so a long corpus never is one huge string."""
    if not isinstance(text, str):
        yield from text
        return
    lines = text.splitlines(keepends=True)
    for start in range(0, len(lines), lines_per_piece):
        yield "".join(lines[start : start + lines_per_piece])


TOKENIZER_KINDS = ("char", "bpe")


def check_settings(kind: str, vocab_size: int = 0) -> None:
    """Refuse a tokenizer kind or size that cannot be fitted (before any data is read)."""
    if kind not in TOKENIZER_KINDS:
        raise UserError(
            f"data.tokenizer={kind!r} is unknown; allowed: {', '.join(TOKENIZER_KINDS)}"
        )
    if kind != "char" and vocab_size and vocab_size < MIN_SUBWORD_VOCAB:
        raise UserError(
            f"data.vocab_size={vocab_size} is too small for a byte-level {kind} tokenizer; "
            f"allowed: at least {MIN_SUBWORD_VOCAB} (256 bytes + 4 special tokens + 1)"
        )


def fit_tokenizer(kind: str, text: str | Iterable[str], vocab_size: int = 0) -> Tokenizer:
    """A tokenizer of `kind` trained on `text` (one string, or strings such as sentences or a
    corpus's documents, which may be streamed); `bpe` learns `vocab_size` entries (0: 1024)."""
    check_settings(kind, vocab_size)
    if kind == "char":
        return CharTokenizer.fit(text if isinstance(text, str) else "".join(text), vocab_size)
    return SubwordTokenizer.fit(text, vocab_size)


def save_tokenizer(tokenizer: Tokenizer, directory: Path) -> None:
    (directory / TOKENIZER_FILE).write_text(json.dumps(tokenizer.to_json()))


def load_tokenizer(directory: Path, setting: str = "") -> Tokenizer:
    """The tokenizer saved in a run's folder; `setting` (e.g. "data.tokenizer_from='runs/x'")
    names where the folder came from, for the error if it holds none."""
    path = directory / TOKENIZER_FILE
    if not path.is_file():
        where = f"{setting}: {directory}" if setting else str(directory)
        problem = "holds no " + TOKENIZER_FILE if directory.is_dir() else "is no folder"
        raise UserError(f"{where} {problem}; give the workdir of a text (LM or seq2seq) run")
    return read_tokenizer_file(path)


def read_tokenizer_file(path: Path, setting: str = "") -> Tokenizer:
    """A tokenizer file: genlab's char vocabulary or any HF `tokenizer.json` with a BPE model
    (GPT-2's among them). `setting` names the config key that gave the path, for errors."""
    where = setting or str(path)
    try:
        text = path.read_text()
        spec = json.loads(text)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UserError(f"{where}: not a readable tokenizer JSON file ({error})") from None
    if spec.get("kind") == "char":
        return CharTokenizer(spec["chars"])
    if spec.get("model", {}).get("type") == "BPE":  # an HF tokenizer.json
        return SubwordTokenizer(hf.Tokenizer.from_str(text))
    kind = spec.get("kind", spec.get("model", {}).get("type"))
    raise UserError(
        f"{where}: unknown tokenizer kind {kind!r}; allowed: {', '.join(TOKENIZER_KINDS)}"
    )


def check_vocab_size(configured: int, data: int) -> None:
    """`model.vocab_size` is 0 (take the tokenizer's) or the tokenizer's own size."""
    if configured and configured != data:
        raise UserError(
            f"model.vocab_size={configured} but the tokenizer has {data} entries; "
            f"allowed: 0 (the tokenizer's) or {data}"
        )
