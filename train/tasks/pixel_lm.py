"""A decoder LM over image pixels (ImageGPT-style): the LM family's model, loss and training on
`train/data/pixels.py`'s rows (one token per grey level behind a start token), evaluated as the
exact bits/dim of the discrete images and sampled pixel by pixel into images, so it takes part in
everything the image families do (`genlab sample` grids, FID)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from train.capabilities import ImageSampler, SampleWriter
from train.data import pixels
from train.data.lm import LMData
from train.data.splits import Splits
from train.pictures import save_grid
from train.state import TrainState
from train.tasks.base import DatasetImages
from train.tasks.lm.sampling import decode_tokens
from train.tasks.lm.task import DecoderTask

SAMPLE_CHUNK = 500  # images drawn at once (bounds the KV cache's memory)


class Task(DecoderTask, ImageSampler, DatasetImages, SampleWriter):
    def __init__(
        self, config: ml_collections.ConfigDict, data: LMData, workdir: Path | None = None
    ):
        super().__init__(config, data, workdir)
        self.image_shape = pixels.image_shape(config.data)

    @classmethod
    def load_data(
        cls, config: ml_collections.ConfigDict, workdir: Path | None, splits: Splits
    ) -> LMData:
        train, val = pixels.load_pixel_rows(config.data, splits)
        return LMData(pixels.VOCAB_SIZE, train=train, val=val)

    def summarize_eval(self, sums: dict[str, np.ndarray]) -> dict[str, float]:
        """The mean loss is -log p of the discrete images per pixel (in nats): bits/dim is that
        over ln 2."""
        loss = float(sums["loss_sum"]) / float(sums["count"])
        return {"eval/loss": loss, "eval/bpd": loss / math.log(2.0)}

    # -- sampling --------------------------------------------------------------------------------
    def sampling_settings(self) -> dict[str, Any]:
        s = self.config.sample
        return {
            "images": "pixels drawn in raster order from the start token, with the KV cache",
            "temperature": s.temperature,
            "top_k": s.top_k,
            "top_p": s.top_p,
        }

    def sample_images(self, state: TrainState, count: int, seed: int) -> Iterator[np.ndarray]:
        """Images in [0, 1], `SAMPLE_CHUNK` at a time; every sequence fills the model's context
        exactly (the start token, then one position per pixel but the last)."""
        s = self.config.sample
        for index, first in enumerate(range(0, count, SAMPLE_CHUNK)):
            starts = jnp.full((min(SAMPLE_CHUNK, count - first), 1), pixels.START, jnp.int32)
            ids = decode_tokens(
                self.model,
                state.params,
                starts,
                self.block_size,
                jax.random.fold_in(jax.random.key(seed), index),
                s.temperature,
                s.top_k,
                s.top_p,
            )
            ids = np.asarray(multihost_utils.process_allgather(ids, tiled=True))
            yield pixels.to_images(ids, self.image_shape)

    def write_samples(self, state: TrainState, step: int, workdir: Path) -> None:
        """A grid of `sample.num_images` images drawn with `sample.seed`."""
        count = self.config.sample.num_images
        images = np.concatenate(list(self.sample_images(state, count, self.config.sample.seed)))
        if jax.process_index() == 0:
            columns = max(1, math.isqrt(count))
            save_grid(images, workdir / "samples" / f"samples_{step:07d}.png", columns)
