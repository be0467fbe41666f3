"""Text corpora through HF `datasets`, cut into random windows for language modelling."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import datasets
import numpy as np

from train.errors import UserError

TINY_SHAKESPEARE_URL = (
    "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
)


def load_text(path: str) -> str:
    """The whole corpus as one string: a local file, or (empty path) Tiny Shakespeare from the web.

    The download goes through `datasets`, which caches it, so it happens once per machine; it also
    decompresses `.gz` (or `.bz2`, `.xz`, ...) files by their suffix, e.g. Multi30k's `train.en.gz`.
    """
    source = path or TINY_SHAKESPEARE_URL
    if path and not Path(path).is_file():
        raise UserError(
            f"data.path={path!r}: no such file; give a local text file, "
            "or leave data.path empty to download Tiny Shakespeare"
        )
    datasets.disable_progress_bars()
    try:
        dataset = datasets.load_dataset(
            "text", data_files=source, sample_by="document", split="train"
        )
    except datasets.exceptions.DatasetGenerationError as error:
        cause = error.__cause__
        if isinstance(cause, UnicodeDecodeError):
            raise UserError(
                f"data.path={path!r} is not UTF-8 text (byte {cause.start}: {cause.reason}); "
                "give a text file"
            ) from None
        raise
    return "".join(dataset["text"])


@dataclass(frozen=True)
class TokenWindows:
    """Random (inputs, targets) windows of a token stream; targets are inputs shifted by one."""

    tokens: np.ndarray
    block_size: int

    def __post_init__(self):
        if len(self.tokens) <= self.block_size + 1:
            raise UserError(
                f"data.block_size={self.block_size} is too long for a split of "
                f"{len(self.tokens)} tokens; use a block shorter than the split"
            )

    def batch(
        self, seed: int, step: int, batch_size: int, process_index: int = 0, process_count: int = 1
    ) -> dict[str, np.ndarray]:
        """The rows of global batch `step` that belong to one process.

        Every process draws the same start offsets from (seed, step) and keeps its own slice.
        """
        rng = np.random.default_rng([seed, step])
        starts = rng.integers(0, len(self.tokens) - self.block_size - 1, size=batch_size)
        rows = batch_size // process_count
        mine = starts[process_index * rows : (process_index + 1) * rows]
        offsets = mine[:, None] + np.arange(self.block_size + 1)[None, :]
        windows = self.tokens[offsets]
        return {"inputs": windows[:, :-1], "targets": windows[:, 1:]}


Sequence = TypeVar("Sequence", str, np.ndarray)


def split_tokens(tokens: Sequence, val_fraction: float) -> tuple[Sequence, Sequence]:
    """First (1 - val_fraction) for training, the rest for validation, as nanoGPT splits; of a
    token array or of the text itself (so a subword tokenizer is fitted on the training part
    only)."""
    if not 0.0 < val_fraction < 1.0:
        raise UserError(f"data.val_fraction={val_fraction} must lie strictly between 0 and 1")
    cut = int(len(tokens) * (1.0 - val_fraction))
    return tokens[:cut], tokens[cut:]
