"""Writing a shard folder so that no interruption leaves anything that looks complete.

Every file is written under a `.tmp` name, flushed to disk and renamed into place (a rename within
a folder is atomic), and the manifest, renamed last, is what marks the folder finished
(train/data/shards.py). A rerun first removes what an interrupted run left.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from train.data.shards import MANIFEST_FILE, TMP_SUFFIX, shard_name


def write_atomically(path: Path, data: bytes | np.ndarray) -> None:
    """`data` at `path`, which appears only once all of it is on disk."""
    tmp = path.with_name(path.name + TMP_SUFFIX)
    with open(tmp, "wb") as f:
        if isinstance(data, np.ndarray):
            data.tofile(f)
        else:
            f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    """The manifest, last: from now on the folder counts as finished."""
    write_atomically(folder / MANIFEST_FILE, (json.dumps(manifest, indent=1) + "\n").encode())


def remove_leftovers(folder: Path, splits: tuple[str, ...]) -> list[str]:
    """Delete what an unfinished run wrote (only names this module writes); their names."""
    gone = []
    for path in sorted(folder.iterdir()):
        name = path.name
        ours = name.endswith(TMP_SUFFIX) or any(
            name.startswith(f"{split}_") and name.endswith(".bin") for split in splits
        )
        if ours and path.is_file():
            path.unlink()
            gone.append(name)
    return gone


class ShardWriter:
    """Streams one split's token ids into shards of `shard_tokens` ids each (the last shorter),
    holding one shard in memory; counts documents and characters for the manifest."""

    def __init__(self, folder: Path, split: str, dtype: np.dtype, shard_tokens: int):
        self.folder = folder
        self.split = split
        self.dtype = np.dtype(dtype)
        self.shard_tokens = shard_tokens
        self.buffer: np.ndarray | None = None  # allocated on first use
        self.filled = 0
        self.shards: list[dict[str, Any]] = []
        self.tokens = 0
        self.documents = 0
        self.chars = 0

    def add(self, tokens: np.ndarray, documents: int = 0, chars: int = 0) -> None:
        self.documents += documents
        self.chars += chars
        self.tokens += len(tokens)
        while len(tokens):
            if self.buffer is None:
                self.buffer = np.empty(self.shard_tokens, self.dtype)
            take = min(len(tokens), self.shard_tokens - self.filled)
            self.buffer[self.filled : self.filled + take] = tokens[:take]
            self.filled += take
            tokens = tokens[take:]
            if self.filled == self.shard_tokens:
                self._flush()

    def _flush(self) -> None:
        assert self.buffer is not None
        name = shard_name(self.split, len(self.shards))
        write_atomically(self.folder / name, self.buffer[: self.filled])
        self.shards.append({"file": name, "tokens": self.filled})
        self.filled = 0

    def close(self) -> dict[str, Any]:
        """Write the last, partly filled shard; the split's manifest entry."""
        if self.filled:
            self._flush()
        self.buffer = None
        return {
            "documents": self.documents,
            "chars": self.chars,
            "tokens": self.tokens,
            "shards": self.shards,
        }
