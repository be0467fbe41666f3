"""Parallel text through HF `datasets`: Multi30k (local files or the hub) and WMT14 (the hub),
tokenized and packed into fixed-shape rows for the encoder-decoder.

Every sentence is cleaned the same way (Multi30k's quirks, see ../shared/data/README.md):
`&amp;` becomes `&`, every run of whitespace (tabs and U+00A0 included) one space, and the ends
are stripped; pairs with an empty side or a bare `@@` placeholder are dropped. The raw target
line is kept beside the cleaned one as the BLEU reference.
"""

from __future__ import annotations

import functools
import gzip
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np

from train.data.tokenizers import SubwordTokenizer
from train.errors import UserError

DATASETS = ("multi30k", "wmt14")
MULTI30K_SPLITS = ("train", "val", "test_2016_flickr", "test_2017_flickr", "test_2018_flickr")
MULTI30K_HUB = "bentrevett/multi30k"  # columns en, de; splits train, validation, test (2016)
MULTI30K_HUB_SPLITS = {"train": "train", "val": "validation", "test_2016_flickr": "test"}
WMT14_HUB, WMT14_CONFIG = "wmt/wmt14", "de-en"  # rows {"translation": {"de": ..., "en": ...}}
WMT14_SPLITS = {"train": "train", "val": "validation", "validation": "validation", "test": "test"}
PLACEHOLDER = "@@"  # Multi30k train.de lines 16,510 and 16,664: untranslated


def clean(line: str) -> str:
    """`&amp;` unescaped, whitespace runs (tab, U+00A0, ...) made one space, ends stripped."""
    return " ".join(line.replace("&amp;", "&").split())


def read_lines(path: Path) -> list[str]:
    """The lines of a (gzip-compressed) text file, split on `\\n` only."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        text = f.read()
    return text.removesuffix("\n").split("\n") if text else []


def local_pairs(
    folder: str, split: str, source: str, target: str, key: str = "split"
) -> datasets.Dataset:
    """Line-aligned `SPLIT.LANG[.gz]` files of a folder (Multi30k's layout), as raw pairs; `key`
    names the config setting that chose the split, for errors."""
    columns = {}
    for column, lang in (("source", source), ("target", target)):
        candidates = [Path(folder) / f"{split}.{lang}{ext}" for ext in (".gz", "")]
        found = next((p for p in candidates if p.is_file()), None)
        if found is None:
            raise UserError(
                f"{key}={split!r}: data.path={folder!r} holds no {split}.{lang}[.gz]; give the "
                f"folder of the split files (Multi30k splits: {', '.join(MULTI30K_SPLITS)}), or "
                "leave data.path empty to download from the hub"
            )
        columns[column] = read_lines(found)
    if len(columns["source"]) != len(columns["target"]):
        raise UserError(
            f"data.path={folder!r}: {split}.{source} has {len(columns['source'])} lines but "
            f"{split}.{target} has {len(columns['target'])}; the files must be line-aligned"
        )
    return datasets.Dataset.from_dict(columns)


def hub_pairs(
    name: str, split: str, source: str, target: str, key: str = "split"
) -> datasets.Dataset:
    """Raw pairs of a split from the HF hub (needs internet; cached by `datasets`); `key` names
    the config setting that chose the split, for errors."""
    splits = MULTI30K_HUB_SPLITS if name == "multi30k" else WMT14_SPLITS
    if split not in splits:
        raise UserError(
            f"{key}={split!r} is not a split of {name} on the hub; allowed: {', '.join(splits)}"
        )
    if name == "multi30k":
        dataset = datasets.load_dataset(MULTI30K_HUB, split=splits[split])
        return dataset.select_columns([source, target]).rename_columns(
            {source: "source", target: "target"}
        )
    dataset = datasets.load_dataset(WMT14_HUB, WMT14_CONFIG, split=splits[split])
    return dataset.map(
        lambda rows: {
            "source": [pair[source] for pair in rows["translation"]],
            "target": [pair[target] for pair in rows["translation"]],
        },
        batched=True,
        batch_size=10_000,
        remove_columns=dataset.column_names,
    )


def load_pairs(
    name: str,
    path: str,
    split: str,
    source: str,
    target: str,
    limit: int = 0,
    key: str = "split",
) -> datasets.Dataset:
    """Cleaned pairs of one split: columns `source`, `target` and `reference` (the raw target
    line, for BLEU); from the folder `path`, or from the hub when `path` is empty. `limit` > 0
    keeps the split's first `limit` lines only, cut before cleaning (so the rest are never
    cleaned; the few pairs cleaning drops are not replaced)."""
    if name not in DATASETS:
        raise UserError(f"data.name={name!r} is unknown; allowed: {', '.join(DATASETS)}")
    if path and not Path(path).is_dir():
        raise UserError(
            f"data.path={path!r}: no such folder; give the folder of the split files, "
            "or leave data.path empty to download from the hub"
        )
    datasets.disable_progress_bars()
    if path:
        raw = local_pairs(path, split, source, target, key)
    else:
        raw = hub_pairs(name, split, source, target, key)
    if limit > 0:
        raw = raw.select(range(min(limit, len(raw))))
    cleaned = raw.map(_clean_rows, batched=True, batch_size=10_000)
    return cleaned.filter(_keep_rows, batched=True, batch_size=10_000)


def _clean_rows(rows: dict[str, list[str]]) -> dict[str, list[str]]:
    return {
        "source": [clean(s) for s in rows["source"]],
        "target": [clean(t) for t in rows["target"]],
        "reference": [t.rstrip("\n") for t in rows["target"]],
    }


def _keep_rows(rows: dict[str, list[str]]) -> list[bool]:
    """Neither side empty nor the `@@` placeholder."""
    return [
        bool(s) and bool(t) and PLACEHOLDER not in (s, t)
        for s, t in zip(rows["source"], rows["target"], strict=True)
    ]


# -- tokenized pairs and packed rows ---------------------------------------------------------------

FIELDS = (
    "source",
    "source_segments",
    "source_positions",
    "target_in",
    "target_out",
    "target_segments",
    "target_positions",
)


@dataclass(frozen=True)
class Specials:
    pad: int
    bos: int
    eos: int


class Ragged:
    """Variable-length id sequences stored flat (one array + offsets): light for millions."""

    def __init__(self, sequences: Sequence[np.ndarray]):
        lengths = np.fromiter((len(s) for s in sequences), np.int64, len(sequences))
        self.offsets = np.concatenate([[0], np.cumsum(lengths)])
        self.ids = (
            np.concatenate(sequences).astype(np.int32) if len(sequences) else np.zeros(0, np.int32)
        )

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, index: int) -> np.ndarray:
        return self.ids[self.offsets[index] : self.offsets[index + 1]]

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)


class TokenPairs:
    """A split's sentence pairs as token ids (without specials). A pair takes `len(source) + 1`
    source slots (EOS appended) and `len(target) + 1` target slots (BOS in, EOS out)."""

    def __init__(self, source: Ragged, target: Ragged):
        self.source, self.target = source, target
        self.source_slots = source.lengths() + 1
        self.target_slots = target.lengths() + 1

    @classmethod
    def encode(
        cls,
        tokenizer: SubwordTokenizer,
        sources: Sequence[str],
        targets: Sequence[str],
        chunk: int = 100_000,
    ) -> TokenPairs:
        """Both sides encoded in parallel by the Rust library, `chunk` sentences at a time."""

        def ragged(texts: Sequence[str]) -> Ragged:
            pieces = []
            for start in range(0, len(texts), chunk):
                pieces.extend(tokenizer.encode_batch(texts[start : start + chunk]))
            return Ragged(pieces)

        return cls(ragged(list(sources)), ragged(list(targets)))

    def __len__(self) -> int:
        return len(self.source)

    def fitting(self, length: int) -> np.ndarray:
        """Indices of the pairs whose both sides fit a row of `length` slots."""
        fits = (self.source_slots <= length) & (self.target_slots <= length)
        return np.flatnonzero(fits)


def first_fit(pairs: TokenPairs, order: np.ndarray, rows: int, length: int) -> list[list[int]]:
    """Pack `order`'s pairs, longest first, each into the first of `rows` rows with room on both
    sides (first-fit decreasing); pairs that fit nowhere are left out."""
    src, tgt = pairs.source_slots[order], pairs.target_slots[order]
    src_free = np.full(rows, length, np.int64)
    tgt_free = np.full(rows, length, np.int64)
    placed: list[list[int]] = [[] for _ in range(rows)]
    for i in np.argsort(-np.maximum(src, tgt), kind="stable"):
        room = np.flatnonzero((src_free >= src[i]) & (tgt_free >= tgt[i]))
        if len(room):
            row = room[0]
            placed[row].append(int(order[i]))
            src_free[row] -= src[i]
            tgt_free[row] -= tgt[i]
    return placed


def next_fit(pairs: TokenPairs, order: np.ndarray, length: int) -> list[list[int]]:
    """Pack `order`'s pairs in order, opening a new row whenever the next one does not fit:
    every pair lands in exactly one row (for evaluation)."""
    placed: list[list[int]] = []
    src_used = tgt_used = length + 1
    for index in order:
        s, t = pairs.source_slots[index], pairs.target_slots[index]
        if src_used + s > length or tgt_used + t > length:
            placed.append([])
            src_used = tgt_used = 0
        placed[-1].append(int(index))
        src_used += s
        tgt_used += t
    return placed


def build_rows(
    pairs: TokenPairs, placed: list[list[int]], length: int, specials: Specials
) -> dict[str, np.ndarray]:
    """Arrays (rows, length) of packed rows: pair j of a row is segment j + 1 (0 is padding),
    positions restart at 0 in every segment. Targets are teacher-forced: `target_in` starts
    with BOS, `target_out` (the labels) ends with EOS."""
    out = {name: np.zeros((len(placed), length), np.int32) for name in FIELDS}
    for name in ("source", "target_in", "target_out"):
        out[name][:] = specials.pad
    for row, members in enumerate(placed):
        s_at = t_at = 0
        for segment, index in enumerate(members, start=1):
            src, tgt = pairs.source[index], pairs.target[index]
            s_end, t_end = s_at + len(src) + 1, t_at + len(tgt) + 1
            out["source"][row, s_at : s_end - 1] = src
            out["source"][row, s_end - 1] = specials.eos
            out["source_segments"][row, s_at:s_end] = segment
            out["source_positions"][row, s_at:s_end] = np.arange(s_end - s_at)
            out["target_in"][row, t_at] = specials.bos
            out["target_in"][row, t_at + 1 : t_end] = tgt
            out["target_out"][row, t_at : t_end - 1] = tgt
            out["target_out"][row, t_end - 1] = specials.eos
            out["target_segments"][row, t_at:t_end] = segment
            out["target_positions"][row, t_at:t_end] = np.arange(t_end - t_at)
            s_at, t_at = s_end, t_end
    return out


class PackedStream:
    """Training batches of packed rows whose content is a pure function of (seed, step).

    Step s takes the next `pairs_per_step` pairs of an endless sequence of epochs, each epoch a
    permutation of the fitting pairs drawn from (seed, epoch), and packs them first-fit
    decreasing into `rows` rows (`pairs_per_step` is chosen so that fewer than 0.5% find no
    room; those are skipped for that epoch).
    Resuming at any step therefore reads exactly what an uninterrupted run would.
    """

    def __init__(
        self, pairs: TokenPairs, rows: int, length: int, pairs_per_step: int, specials: Specials
    ):
        self.pairs, self.rows, self.length, self.specials = pairs, rows, length, specials
        self.eligible = pairs.fitting(length)
        if len(self.eligible) == 0:
            raise UserError(f"data.max_len={length}: no training pair fits; use a longer max_len")
        self.pairs_per_step = pairs_per_step

    @functools.lru_cache(maxsize=2)  # noqa: B019 (one stream per task, two epochs in use)
    def _epoch(self, seed: int, epoch: int) -> np.ndarray:
        return np.random.default_rng([seed, epoch]).permutation(self.eligible)

    def batch(
        self, seed: int, step: int, process_index: int = 0, process_count: int = 1
    ) -> dict[str, np.ndarray]:
        n = len(self.eligible)
        flat = step * self.pairs_per_step + np.arange(self.pairs_per_step)
        epochs, at = np.divmod(flat, n)
        order = np.concatenate(
            [self._epoch(seed, int(e))[at[epochs == e]] for e in np.unique(epochs)]
        )
        placed = first_fit(self.pairs, order, self.rows, self.length)
        share = self.rows // process_count
        mine = placed[process_index * share : (process_index + 1) * share]
        return build_rows(self.pairs, mine, self.length, self.specials)


def pairs_per_step(
    pairs: TokenPairs, rows: int, length: int, keep: float = 0.995, windows: int = 4
) -> int:
    """The most pairs a step can take such that first-fit packing into `rows` rows places at
    least `keep` of them, on each of a few random windows of the data (a fixed calibration
    draw, so the number depends on the data and shapes only)."""
    eligible = pairs.fitting(length)
    rng = np.random.default_rng(0)
    samples = [rng.permutation(eligible) for _ in range(windows)]

    def fits(count: int) -> bool:
        for sample in samples:
            window = np.resize(sample, count)  # wraps around a dataset smaller than the window
            placed = sum(len(row) for row in first_fit(pairs, window, rows, length))
            if placed < keep * count:
                return False
        return True

    low, high = rows, rows * length // 2 + 1  # one pair per row always fits; none is < 2 slots
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if fits(middle) else (low, middle)
    return low


def eval_rows(
    pairs: TokenPairs, length: int, specials: Specials
) -> tuple[dict[str, np.ndarray], int]:
    """Every fitting pair of an eval split packed in order (next fit), and how many were too
    long to fit."""
    eligible = pairs.fitting(length)
    return build_rows(pairs, next_fit(pairs, eligible, length), length, specials), len(pairs) - len(
        eligible
    )


def source_rows(
    sources: Ragged, indices: np.ndarray, length: int, specials: Specials
) -> np.ndarray:
    """Unpacked source rows for decoding, (len(indices), length): ids (cut to fit) + EOS, then
    padding."""
    out = np.full((len(indices), length), specials.pad, np.int32)
    for row, index in enumerate(indices):
        ids = sources[int(index)][: length - 1]
        out[row, : len(ids)] = ids
        out[row, len(ids)] = specials.eos
    return out
