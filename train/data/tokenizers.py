"""Tokenizers that are saved with a run, so `eval` and `sample` decode exactly as training did."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Protocol

import numpy as np

from train.errors import UserError

TOKENIZER_FILE = "tokenizer.json"


class Tokenizer(Protocol):
    vocab_size: int

    def encode(self, text: str) -> np.ndarray: ...

    def decode(self, ids: np.ndarray | list[int]) -> str: ...

    def to_json(self) -> dict: ...


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
                f"text holds characters the tokenizer never saw: {''.join(unknown)!r}; "
                f"allowed: {self.chars!r}"
            )
        return np.fromiter((self.index[c] for c in text), dtype=np.int32, count=len(text))

    def decode(self, ids: np.ndarray | list[int]) -> str:
        return "".join(self.chars[int(i)] for i in ids)

    def to_json(self) -> dict:
        return {"kind": self.kind, "chars": self.chars}


TOKENIZER_KINDS = {"char": CharTokenizer}


def fit_tokenizer(kind: str, text: str, vocab_size: int = 0) -> Tokenizer:
    """A tokenizer of `kind` trained on `text`; subword kinds learn `vocab_size` entries."""
    if kind not in TOKENIZER_KINDS:
        raise UserError(
            f"data.tokenizer={kind!r} is unknown; allowed: {', '.join(TOKENIZER_KINDS)}"
        )
    return TOKENIZER_KINDS[kind].fit(text, vocab_size)


def save_tokenizer(tokenizer: Tokenizer, directory: Path) -> None:
    (directory / TOKENIZER_FILE).write_text(json.dumps(tokenizer.to_json()))


def load_tokenizer(directory: Path) -> Tokenizer:
    path = directory / TOKENIZER_FILE
    if not path.is_file():
        raise UserError(f"{directory} holds no {TOKENIZER_FILE}; is it a language-model workdir?")
    spec = json.loads(path.read_text())
    if spec["kind"] == "char":
        return CharTokenizer(spec["chars"])
    raise UserError(f"{path}: unknown tokenizer kind {spec['kind']!r}")
