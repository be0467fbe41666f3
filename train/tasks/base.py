"""What the generic trainer asks of a model family."""

from __future__ import annotations

import abc
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import jax
import ml_collections
import numpy as np

from train.errors import UserError

Batch = dict[str, Any]


class Task(abc.ABC):
    """A model family's loss, steps, data and evaluation, behind one interface.

    Steps are pure functions of (state, batch) so the trainer can jit, shard and donate them.
    Batches returned by `train_batch`/`eval_batches` are this process's rows only.
    """

    #: logical axis names of each batch entry, e.g. {"inputs": ("batch", "length")}
    batch_axes: ClassVar[dict[str, tuple[str | None, ...]]]

    def __init__(
        self, config: ml_collections.ConfigDict, workdir: Path | None = None, load_data: bool = True
    ):
        self.config = config
        self.workdir = workdir

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

    def write_samples(self, state: Any, step: int, workdir: Path) -> str | None:
        """Draw samples and (on process 0 only) write them into `workdir/samples`.

        Called on every process, since drawing from sharded parameters needs all of them.
        Returns text worth logging, if any.
        """
        return None

    def evaluate_state(self, state: Any) -> dict[str, float]:
        """Metrics of the state itself rather than of eval batches (e.g. FID of samples), added
        to the eval metrics at every eval. Called on every process."""
        return {}

    def sample_images(self, state: Any, count: int, seed: int) -> Iterator[np.ndarray]:
        """Image families: `count` model samples as [0, 1] arrays (N, H, W, C), in chunks."""
        raise UserError(f"task {self.config.task!r} does not generate images (no FID for it)")

    def sampling_settings(self) -> dict[str, Any]:
        """Image families: how `sample_images` draws (e.g. sampler and steps), recorded with
        every FID score."""
        return {}

    def reference_images(self, split: str) -> np.ndarray:
        """Image families: the dataset split's images as [0, 1] floats (N, H, W, C)."""
        raise UserError(f"task {self.config.task!r} has no reference images")

    def examples_per_step(self) -> tuple[str, float]:
        """The unit of throughput and how many of them one step processes (e.g. tokens)."""
        return "examples", float(self.config.train.batch_size)

    def flops_per_step(self, state: Any) -> float | None:
        """Model FLOPs of one training step, for MFU; None when not known."""
        return None


class ImageTask(Task):
    """What the image families share: throughput in images, the dataset's images as the FID
    reference, and FID/KID of `eval.fid_samples` samples at every eval when asked for."""

    _quality: Any = None  # the FID Inception, loaded on first use

    def examples_per_step(self) -> tuple[str, float]:
        return "images", float(self.config.train.batch_size)

    def reference_images(self, split: str) -> np.ndarray:
        from train.data import images

        d = self.config.data
        pixels, _ = images.load_split(d.name, d.path, split)
        return images.scale(pixels, "unit")

    def evaluate_state(self, state: Any) -> dict[str, float]:
        count = self.config.eval.get("fid_samples", 0)
        if count <= 0:
            return {}
        if self._quality is None:
            from train.metrics.generated import SampleQuality  # it imports this module

            self._quality = SampleQuality(self.config.eval.get("fid_weights", ""))
        return self._quality(self, state, count)
