"""What the generic trainer asks of a model family."""

from __future__ import annotations

import abc
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import jax
import ml_collections
import numpy as np

from train.capabilities import ReferenceImages
from train.data import images
from train.data.splits import Splits

Batch = dict[str, Any]


class Task(abc.ABC):
    """A model family's loss, steps and held-out evaluation, behind one interface.

    Steps are pure functions of (state, batch) so the trainer can jit, shard and donate them.
    Batches returned by `train_batch`/`eval_batches` are this process's rows only. The task is
    handed its data (`load_data`, called by `train.tasks.build_task` with the splits the command
    needs) and never writes into its config: what it derives from the data (e.g. the vocabulary
    size) it reports through `derived_settings`. What else it can do (sample text or images,
    translate, ...) it declares as base classes from `train/capabilities.py`.
    """

    #: logical axis names of each batch entry, e.g. {"inputs": ("batch", "length")}
    batch_axes: ClassVar[dict[str, tuple[str | None, ...]]]

    def __init__(self, config: ml_collections.ConfigDict, data: Any, workdir: Path | None = None):
        self.config = config
        self.data = data
        self.workdir = workdir

    @classmethod
    @abc.abstractmethod
    def load_data(
        cls, config: ml_collections.ConfigDict, workdir: Path | None, splits: Splits
    ) -> Any:
        """The family's data for `splits` (see `train/data/splits.py`), from its data module."""

    @abc.abstractmethod
    def init_state(self, rng: jax.Array) -> Any:
        """A fresh train state whose parameters keep their logical-axis boxes."""

    @abc.abstractmethod
    def train_step(self, state: Any, batch: Batch) -> tuple[Any, dict[str, jax.Array]]:
        """One optimisation step; metrics include `train/loss`."""

    @abc.abstractmethod
    def eval_step(self, state: Any, batch: Batch) -> dict[str, jax.Array]:
        """Sums over one eval batch (e.g. loss sum and count) that `summarize_eval` reduces."""

    @abc.abstractmethod
    def summarize_eval(self, sums: dict[str, np.ndarray]) -> dict[str, float]:
        """Turn summed eval statistics into `eval/...` metrics."""

    @abc.abstractmethod
    def train_batch(self, step: int) -> Batch:
        """This process's rows of global batch `step`: a pure function of (seed, step)."""

    @abc.abstractmethod
    def eval_batches(self) -> Iterator[Batch]:
        """This process's rows of every eval batch, the same ones at every evaluation."""

    def save_assets(self, workdir: Path) -> None:  # noqa: B027 (optional hook)
        """Write what a workdir needs besides config and checkpoints (e.g. the tokenizer)."""

    def derived_settings(self) -> dict[str, Any]:
        """Settings derived from the data rather than configured (e.g. the vocabulary size),
        recorded in the workdir's metadata.json."""
        return {}

    def examples_per_step(self) -> tuple[str, float]:
        """The unit of throughput and how many of them one step processes (e.g. tokens)."""
        return "examples", float(self.config.train.batch_size)

    def flops_per_step(self, state: Any) -> float | None:
        """Model FLOPs of one training step, for MFU; None when not known."""
        return None


class DatasetImages(ReferenceImages):
    """The images of `data.name` as the FID reference, for every task trained on an image set."""

    config: ml_collections.ConfigDict

    def dataset_name(self) -> str:
        return self.config.data.name

    def reference_images(self, split: str) -> np.ndarray:
        d = self.config.data
        pixels, _ = images.load_split(d.name, d.path, split)
        return images.scale(pixels, "unit")


class ImageTask(Task, DatasetImages):
    """What the image families share: batches of weighted, labelled images, throughput in
    images, and the dataset's images as the FID reference."""

    batch_axes: ClassVar = {
        "image": ("batch", None, None, None),
        "label": ("batch",),
        "weight": ("batch",),
    }

    def examples_per_step(self) -> tuple[str, float]:
        return "images", float(self.config.train.batch_size)
