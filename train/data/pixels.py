"""Images as token sequences for a decoder LM (ImageGPT-style): one token per 8-bit grey level.

`data.source=pixels` turns each image of `data.name` into its pixels in raster order, ids 0..255,
and puts a start token (id 256) in front, so the LM's inputs are (start, x_1 .. x_{D-1}) and its
targets x_1 .. x_D: the mean next-token loss over a split is then the model's exact negative
log-likelihood of the discrete images per dimension, the same convention as the VAE's
discretized decoder and the DDPM bound (bits/dim = loss / ln 2). Training rows are epoch-wise
shuffled images (a pure function of (seed, step)); evaluation walks the split in order, so
`train.eval_batches * train.batch_size` images cover the first that many test images exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import ml_collections
import numpy as np

from train.data.images import SHAPES, ImageStream, load_split
from train.data.splits import EVAL, TRAIN, Splits
from train.errors import UserError

LEVELS = 256  # grey levels, the ids of the pixel tokens
START = LEVELS  # the start token's id
VOCAB_SIZE = LEVELS + 1


@dataclass(frozen=True)
class PixelRows:
    """Images of one split as (start + pixels[:-1], pixels) rows; `ordered`: consecutive images
    (evaluation) rather than shuffled ones (training)."""

    pixels: np.ndarray  # uint8 [N, D]
    ordered: bool = False

    def batch(
        self, seed: int, step: int, batch_size: int, process_index: int = 0, process_count: int = 1
    ) -> dict[str, np.ndarray]:
        """The rows of global batch `step` that belong to one process."""
        if self.ordered:
            share = batch_size // process_count
            first = step * batch_size + process_index * share
            rows = np.arange(first, first + share) % len(self.pixels)
        else:
            stream = ImageStream(self.pixels, np.zeros(len(self.pixels), np.int64))
            rows = stream.indices(seed, step, batch_size, process_index, process_count)
        targets = self.pixels[rows].astype(np.int32)
        start = np.full((len(rows), 1), START, np.int32)
        return {"inputs": np.concatenate([start, targets[:, :-1]], axis=1), "targets": targets}


def image_shape(d: ml_collections.ConfigDict) -> tuple[int, int, int]:
    """(H, W, C) of `data.name`, whose H * W * C pixels must be the LM's `data.block_size`."""
    if d.name not in SHAPES:
        raise UserError(
            f"data.name={d.name!r} has no images; allowed with data.source=pixels: "
            f"{', '.join(SHAPES)}"
        )
    shape = SHAPES[d.name]
    if d.block_size != math.prod(shape):
        raise UserError(
            f"data.block_size={d.block_size}: data.source=pixels needs one position per pixel of "
            f"{d.name}, {math.prod(shape)} ({' x '.join(map(str, shape))})"
        )
    return shape


def load_pixel_rows(
    d: ml_collections.ConfigDict, splits: Splits
) -> tuple[PixelRows | None, PixelRows | None]:
    """(training rows, evaluation rows of `data.eval_split`), each only when its split is asked
    for."""
    image_shape(d)
    train = val = None
    if TRAIN in splits:
        images, _ = load_split(d.name, d.path, "train")
        train = PixelRows(images.reshape(len(images), -1))
    if EVAL in splits:
        images, _ = load_split(d.name, d.path, d.get("eval_split", "test"))
        val = PixelRows(images.reshape(len(images), -1), ordered=True)
    return train, val


def to_images(ids: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Sampled ids (N, D) as images in [0, 1] of `shape`; a start token drawn as a pixel (the
    model gives it almost no mass once trained) reads as black."""
    levels = np.where(ids >= LEVELS, 0, ids).astype(np.float32) / (LEVELS - 1)
    return levels.reshape(len(ids), *shape)
