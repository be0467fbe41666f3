"""A raw text corpus for `genlab prepare`, opened through HF `datasets`: local files or the hub.

`data.prepare.files` names local files (one path, a glob, or several separated by commas) of one
kind: text (`.txt`; `data.prepare.sample_by` makes a document of each file, paragraph or line),
JSON lines or Parquet (their `data.prepare.text_field` column), compressed or not.
`data.prepare.dataset` names a hub dataset (`Skylion007/openwebtext`); with
`data.prepare.streaming` its documents are read as they download, for corpora larger than the disk
or memory, instead of being stored first as Arrow files (which `datasets` memory-maps: even then the
corpus is never held in memory).
"""

from __future__ import annotations

import glob
from pathlib import Path

import datasets
import ml_collections

from train.errors import UserError

Corpus = datasets.Dataset | datasets.IterableDataset
COMPRESSIONS = (".gz", ".bz2", ".xz", ".zst", ".lz4")
BUILDERS = {
    ".txt": "text",
    ".text": "text",
    ".json": "json",
    ".jsonl": "json",
    ".parquet": "parquet",
}


def local_files(spec: str) -> list[str]:
    """The files `data.prepare.files` names, in the order given (each glob sorted)."""
    files: list[str] = []
    for part in (p.strip() for p in spec.split(",") if p.strip()):
        matches = sorted(glob.glob(part)) if glob.has_magic(part) else [part]
        missing = [m for m in matches if not Path(m).is_file()] or ([] if matches else [part])
        if missing:
            raise UserError(
                f"data.prepare.files={spec!r}: no such file {missing[0]!r}; give text, JSON lines "
                "or Parquet files (a path, a glob, or several separated by commas)"
            )
        files.extend(matches)
    return files


def builder_for(files: list[str], spec: str) -> str:
    """The `datasets` builder that reads `files`, from their suffix (a compression suffix aside)."""
    kinds = set()
    for file in files:
        suffixes = [s.lower() for s in Path(file).suffixes]
        if suffixes and suffixes[-1] in COMPRESSIONS:
            suffixes.pop()
        kinds.add(BUILDERS.get(suffixes[-1] if suffixes else "", "?"))
    if len(kinds) != 1 or "?" in kinds:
        raise UserError(
            f"data.prepare.files={spec!r}: files of one kind are needed, by suffix: "
            f"{', '.join(sorted(BUILDERS))} (optionally compressed: {', '.join(COMPRESSIONS)})"
        )
    return kinds.pop()


def open_corpus(prepare: ml_collections.ConfigDict) -> Corpus:
    """The corpus `data.prepare` names, reduced to its text column (`text_field`)."""
    p = prepare
    datasets.disable_progress_bars()
    if bool(p.files) == bool(p.dataset):
        raise UserError(
            f"data.prepare.files={p.files!r} and data.prepare.dataset={p.dataset!r}: give exactly "
            "one (local files, or a hub dataset id such as Skylion007/openwebtext)"
        )
    try:
        if p.files:
            files = local_files(p.files)
            builder = builder_for(files, p.files)
            options = {"sample_by": p.sample_by} if builder == "text" else {}
            corpus = datasets.load_dataset(
                builder, data_files=files, split="train", streaming=p.streaming, **options
            )
        else:
            corpus = datasets.load_dataset(
                p.dataset, p.dataset_config or None, split=p.split, streaming=p.streaming
            )
    except datasets.exceptions.DatasetGenerationError as error:
        cause = error.__cause__
        if isinstance(cause, UnicodeDecodeError):
            raise UserError(
                f"data.prepare.files={p.files!r} is not UTF-8 text (byte {cause.start}: "
                f"{cause.reason}); give text files"
            ) from None
        raise
    except (
        datasets.exceptions.DatasetNotFoundError,
        FileNotFoundError,
        ConnectionError,
        ValueError,
    ) as error:
        where = (
            f"data.prepare.files={p.files!r}" if p.files else f"data.prepare.dataset={p.dataset!r}"
        )
        text = str(error).strip()
        message = text.splitlines()[0] if text else type(error).__name__
        raise UserError(f"{where} cannot be read: {message}") from None
    columns = corpus.column_names
    if columns is not None and p.text_field not in columns:
        raise UserError(
            f"data.prepare.text_field={p.text_field!r} is not a column of the corpus; allowed: "
            f"{', '.join(columns)}"
        )
    return corpus.select_columns([p.text_field])
