"""Token shards: the folder `genlab prepare` writes and `data.source=shards` reads.

A folder holds each split as flat files of token ids (`train_00000.bin`, `train_00001.bin`, ...,
`val_00000.bin`: raw little-endian uint16 when every id fits, else uint32, as nanoGPT's
`train.bin`), the tokenizer that made them (`tokenizer.json`) and `manifest.json`, written last,
which lists every shard with its token count. A shard is named `.bin` only once it is complete,
and a folder without a manifest is unfinished: nothing in it is read.

Why flat memmaps rather than ArrayRecord + Grain: a training window is block_size + 1 consecutive
tokens at a random offset, so the one read the trainer needs is "n tokens at offset k", a slice of
a fixed-width array that the page cache serves with no index, no decoding and no copy but the
window's own. ArrayRecord stores variable-length records behind a block index, so a window that
crosses records costs several record reads and decodes; Grain's strengths (samplers, worker
processes, a checkpointable iterator) repeat what batches as a pure function of (seed, step)
already give: there is no iterator state to save, and resuming needs only the step. Memmaps need
nothing beyond numpy (no platform-specific wheels), the processes of a host share one page cache,
and the files are nanoGPT's format, readable anywhere with one `np.memmap` call. What they lack:
compression (OpenWebText's 9B GPT-2 tokens take 18 GB) and reads straight from object storage (a
pod without a shared or local disk would want ArrayRecord on GCS).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from train.data.tokenizers import TOKENIZER_FILE, Tokenizer, load_tokenizer
from train.errors import UserError

MANIFEST_FILE = "manifest.json"
FORMAT = "genlab token shards"
VERSION = 1
TMP_SUFFIX = ".tmp"  # a file being written; renamed when complete


def shard_dtype(vocab_size: int) -> np.dtype:
    """The narrowest unsigned type that holds every id of the vocabulary."""
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)


def shard_name(split: str, index: int) -> str:
    return f"{split}_{index:05d}.bin"


def canonical_json(tokenizer: Tokenizer) -> bytes:
    """The tokenizer's JSON with sorted keys and no spaces: the same bytes for the same
    tokenizer however its file was laid out (a shard folder's tokenizer.json is exactly this)."""
    return json.dumps(tokenizer.to_json(), sort_keys=True, separators=(",", ":")).encode()


def fingerprint(tokenizer: Tokenizer) -> str:
    """sha256 of the tokenizer's canonical JSON, which fixes what every id means; for a shard
    folder, `sha256sum tokenizer.json` gives the same."""
    return hashlib.sha256(canonical_json(tokenizer)).hexdigest()


def read_manifest(folder: Path, setting: str) -> dict[str, Any]:
    """A finished folder's manifest; `setting` names where the folder came from, for errors."""
    if not folder.is_dir():
        raise UserError(
            f"{setting}: no such folder; give the --out folder of `genlab prepare`"
            if not folder.exists()
            else f"{setting} is a file; give the --out folder of `genlab prepare`"
        )
    path = folder / MANIFEST_FILE
    if not path.is_file():
        raise UserError(
            f"{setting} holds no {MANIFEST_FILE}: its shards are unfinished or were never "
            "prepared; run `genlab prepare --config FILE.py:VARIANT --out FOLDER` (again)"
        )
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise UserError(f"{path} is not JSON ({error.msg}); prepare the folder again") from None
    if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise UserError(
            f"{path} is not a genlab shard manifest (format {manifest.get('format')!r}, version "
            f"{manifest.get('version')!r}); allowed: {FORMAT!r} version {VERSION}"
        )
    return manifest


class ShardFolder:
    """A prepared folder: its manifest, its tokenizer (checked against the manifest) and the
    windows of any of its splits."""

    def __init__(self, path: str, setting: str = "data.path"):
        if not path:
            raise UserError(
                f"{setting} is empty: data.source=shards needs the folder `genlab prepare --out` "
                "wrote"
            )
        self.folder = Path(path)
        self.setting = f"{setting}={path!r}"
        self.manifest = read_manifest(self.folder, self.setting)
        if not (self.folder / TOKENIZER_FILE).is_file():
            raise UserError(
                f"{self.setting} has a {MANIFEST_FILE} but no {TOKENIZER_FILE}; prepare the "
                "folder again"
            )
        self.tokenizer = load_tokenizer(self.folder, self.setting)
        expected = self.manifest["tokenizer"]["sha256"]
        if fingerprint(self.tokenizer) != expected:
            raise UserError(
                f"{self.folder / TOKENIZER_FILE} is not the tokenizer the shards were made with "
                f"(its sha256 is not the manifest's {expected[:12]}); prepare the folder again"
            )

    @property
    def splits(self) -> list[str]:
        return list(self.manifest["splits"])

    def split(self, name: str, key: str) -> dict[str, Any]:
        if name not in self.manifest["splits"]:
            allowed = ", ".join(self.splits)
            raise UserError(f"{key}={name!r} is not a split of {self.setting}; allowed: {allowed}")
        return self.manifest["splits"][name]

    def windows(self, name: str, block_size: int, key: str) -> ShardWindows:
        """Windows of split `name` (`key` is the config key that named it), once every shard
        file is there with the size the manifest gives it."""
        entry = self.split(name, key)
        dtype = np.dtype(self.manifest["dtype"])
        paths, sizes = [], []
        for shard in entry["shards"]:
            path = self.folder / shard["file"]
            expected = shard["tokens"] * dtype.itemsize
            found = path.stat().st_size if path.is_file() else None
            if found != expected:
                have = "is missing" if found is None else f"holds {found} bytes"
                raise UserError(
                    f"{path} {have}, but {MANIFEST_FILE} gives it {shard['tokens']} {dtype.name} "
                    f"tokens ({expected} bytes); prepare the folder again"
                )
            paths.append(path)
            sizes.append(shard["tokens"])
        return ShardWindows(tuple(paths), tuple(sizes), dtype.name, block_size, f"{key}={name!r}")

    def tokens_per_char(self, name: str, key: str) -> float:
        entry = self.split(name, key)
        return entry["tokens"] / max(entry["chars"], 1)

    def check_tokenizer(self, other: Tokenizer, origin: str) -> None:
        """`other` (a run's, or the one `origin` names) must be this folder's tokenizer: token ids
        mean nothing under another."""
        ours, theirs = self.manifest["tokenizer"]["sha256"], fingerprint(other)
        if ours != theirs:
            raise UserError(
                f"{self.setting} holds shards of another tokenizer than {origin} ({other.kind}, "
                f"{other.vocab_size} entries, sha256 {theirs[:12]}; the shards': "
                f"{self.tokenizer.vocab_size} entries, sha256 {ours[:12]}); prepare the shards "
                "with that tokenizer (data.tokenizer_path) or use a new --workdir"
            )


@dataclass(frozen=True)
class ShardWindows:
    """Random (inputs, targets) windows of block_size + 1 tokens of one split's shards.

    A window lies inside one shard. Window w is the w-th start position counted shard by shard,
    so drawing w uniformly draws uniformly among all windows. A batch maps the shards it reads
    (`np.memmap`) and copies only this process's rows; the maps close with the batch, so the
    process never holds more of the corpus than one batch (as nanoGPT re-maps its file per batch).
    """

    paths: tuple[Path, ...]
    sizes: tuple[int, ...]  # tokens per shard
    dtype: str
    block_size: int
    name: str = "the split"  # for errors, e.g. "data.train_split='train'"
    first: np.ndarray = field(init=False, repr=False, compare=False)  # each shard's first window

    def __post_init__(self):
        starts = np.maximum(np.asarray(self.sizes, np.int64) - self.block_size, 0)
        if not starts.sum():
            longest = max(self.sizes, default=0)
            raise UserError(
                f"data.block_size={self.block_size} is too long for {self.name}, whose longest "
                f"shard holds {longest} tokens; use a block shorter than that"
            )
        object.__setattr__(self, "first", np.concatenate([[0], np.cumsum(starts)]))

    @property
    def num_windows(self) -> int:
        return int(self.first[-1])

    def batch(
        self, seed: int, step: int, batch_size: int, process_index: int = 0, process_count: int = 1
    ) -> dict[str, np.ndarray]:
        """The rows of global batch `step` that belong to one process: every process draws the
        same windows from (seed, step) and reads only its own slice of them."""
        rng = np.random.default_rng([seed, step])
        drawn = rng.integers(0, self.num_windows, size=batch_size)
        rows = batch_size // process_count
        windows = self.read(drawn[process_index * rows : (process_index + 1) * rows])
        return {"inputs": windows[:, :-1], "targets": windows[:, 1:]}

    def read(self, windows: np.ndarray) -> np.ndarray:
        """Windows number `windows`, as int32 rows of block_size + 1 tokens. Reads go shard by
        shard in ascending offsets, which keeps them sequential where windows are near."""
        shard = np.searchsorted(self.first, windows, side="right") - 1
        offset = windows - self.first[shard]
        width = self.block_size + 1
        out = np.empty((len(windows), width), np.int32)
        order = np.lexsort((offset, shard))
        bounds = np.searchsorted(shard[order], np.arange(len(self.paths) + 1))
        for index in np.flatnonzero(np.diff(bounds)):
            mapped = np.memmap(self.paths[index], dtype=self.dtype, mode="r")
            tokens = mapped.view(np.ndarray)  # plain slices: memmap's own cost 3x the copy's
            rows = order[bounds[index] : bounds[index + 1]].tolist()
            for row, start in zip(rows, offset[rows].tolist(), strict=True):
                out[row] = tokens[start : start + width]
            del tokens, mapped  # unmapped: the pages stay in the page cache, not in this process
        return out
