"""What a task can do beyond training and its held-out loss, declared instead of guessed.

A family names its capabilities as base classes of its `Task` (`class Task(base.Task,
TextSampler)`), so the CLI and the evaluators ask `require(task, TextSampler, ...)` rather than
probing attributes: a task that lacks a capability is refused in one line that names what its
family does offer.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np

from train.errors import UserError


@dataclass(frozen=True)
class TextSampling:
    """How `genlab sample` draws text (a translator uses its configured search instead)."""

    num_tokens: int = 500
    seed: int = 0
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0


class TextSampler(Protocol):
    """Text from a prompt: a continuation (LMs) or a translation of each line (seq2seq)."""

    def sample_text(self, state: Any, prompt: str, settings: TextSampling) -> str: ...

    def vocab_size(self) -> int: ...


class ImageSampler(Protocol):
    """Model samples as [0, 1] images, and how they were drawn (recorded with each FID)."""

    def sample_images(self, state: Any, count: int, seed: int) -> Iterator[np.ndarray]: ...

    def sampling_settings(self) -> dict[str, Any]: ...


class ReferenceImages(Protocol):
    """The dataset's images of a split as [0, 1] floats (N, H, W, C): FID's reference."""

    def reference_images(self, split: str) -> np.ndarray: ...

    def dataset_name(self) -> str: ...


class Translator(Protocol):
    """Sentences translated with the configured search, and the eval split's pairs (for BLEU)."""

    def translate(self, state: Any, sources: list[str]) -> list[str]: ...

    def eval_pairs_text(self) -> tuple[list[str], list[str]]: ...

    def eval_split_description(self) -> dict[str, Any]: ...

    def decode_settings(self) -> dict[str, Any]: ...


class SampleWriter(Protocol):
    """Writes a fixed-seed sample (text or picture grid) into `workdir/samples` at each eval."""

    def write_samples(self, state: Any, step: int, workdir: Path) -> str | None: ...


CAPABILITIES: dict[type, str] = {
    TextSampler: "a text sampler",
    ImageSampler: "an image sampler",
    ReferenceImages: "a source of reference images",
    Translator: "a translator",
    SampleWriter: "a sample writer",
}

T = TypeVar("T")


def has(task: object, capability: type) -> bool:
    """Whether the task's class declares `capability` (a base class, not a matching attribute)."""
    return capability in type(task).__mro__


def require(task: Any, capability: type[T], purpose: str) -> T:
    """`task` itself, when its family declares `capability`; else a one-line UserError."""
    if not has(task, capability):
        name = getattr(getattr(task, "config", None), "task", type(task).__module__)
        offers = [n for kind, n in CAPABILITIES.items() if has(task, kind)]
        raise UserError(
            f"{purpose}: task {name!r} is not {CAPABILITIES[capability]}; "
            f"it is {', '.join(offers) or 'trainable and evaluated on held-out data only'}"
        )
    return task
