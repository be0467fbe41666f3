"""Image datasets through HF `datasets`: MNIST, Fashion-MNIST, statically binarized MNIST, CIFAR-10.

Local copies (the original IDX `.gz` files, Larochelle's `.amat.gz`) are read into
`datasets.Dataset`s; with an empty path the hub copy is downloaded once. Batches are a pure function
of (seed, step): step s takes the s-th slice of an endless stream of per-epoch permutations, so a
resumed run sees exactly the examples an uninterrupted one would.
"""

from __future__ import annotations

import gzip
import math
from dataclasses import dataclass
from pathlib import Path

import datasets
import ml_collections
import numpy as np

from train.data.splits import EVAL, TRAIN, Splits, loaded
from train.errors import UserError

# name -> (hub id for online users, local files per split)
IDX_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
HUB_IDS = {
    "mnist": "ylecun/mnist",
    "fashion_mnist": "zalando-datasets/fashion_mnist",
    "cifar10": "uoft-cs/cifar10",
}
DATASETS = ("mnist", "fashion_mnist", "binarized_mnist", "cifar10")
SHAPES = {
    "mnist": (28, 28, 1),
    "fashion_mnist": (28, 28, 1),
    "binarized_mnist": (28, 28, 1),
    "cifar10": (32, 32, 3),
}


def _read_idx(path: Path, offset: int) -> np.ndarray:
    return np.frombuffer(gzip.open(path).read(), np.uint8, offset=offset)


def _as_dataset(images: np.ndarray, labels: np.ndarray) -> datasets.Dataset:
    """Images as flat uint8 rows (fast to build and read back through Arrow)."""
    return datasets.Dataset.from_dict(
        {"image": images.reshape(len(labels), -1), "label": labels.astype(np.int64)}
    )


def _local_idx(folder: Path, split: str) -> datasets.Dataset:
    images_file, labels_file = IDX_FILES[split]
    return _as_dataset(_read_idx(folder / images_file, 16), _read_idx(folder / labels_file, 8))


def _local_binarized(folder: Path, split: str) -> datasets.Dataset:
    """Larochelle's text layout: 784 '0'/'1' characters separated by spaces, one row per line.

    Its rows are 0/1; they are stored as 0/255 so every dataset here is uint8 grey levels.
    """
    with gzip.open(folder / f"binarized_mnist_{split}.amat.gz") as f:
        bits = (np.frombuffer(f.read(), np.uint8)[::2] - ord("0")).reshape(-1, 784)
    return _as_dataset(bits * np.uint8(255), np.full(len(bits), -1))


def _hub(name: str, split: str) -> datasets.Dataset:
    dataset = datasets.load_dataset(HUB_IDS[name], split=split)
    image_key = "img" if "img" in dataset.column_names else "image"
    label_key = "label" if "label" in dataset.column_names else dataset.column_names[-1]
    images = np.stack([np.asarray(im) for im in dataset[image_key]]).astype(np.uint8)
    if images.ndim == 3:
        images = images[..., None]
    return datasets.Dataset.from_dict(
        {"image": images, "label": np.asarray(dataset[label_key], np.int64)}
    )


def load_split(name: str, path: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [N, H, W, C], labels int64 [N], -1 where there are none) of one split."""
    if name not in DATASETS:
        raise UserError(f"data.name={name!r} is unknown; allowed: {', '.join(DATASETS)}")
    datasets.disable_progress_bars()
    if not path:
        if name not in HUB_IDS:
            raise UserError(f"data.name={name!r} has no hub copy; set data.path to its folder")
        dataset = _hub(name, split)
    else:
        folder = Path(path)
        if not folder.is_dir():
            raise UserError(f"data.path={path!r}: no such folder (expected the {name} files)")
        try:
            dataset = (
                _local_binarized(folder, split)
                if name == "binarized_mnist"
                else _local_idx(folder, split)
            )
        except FileNotFoundError as missing:
            raise UserError(
                f"data.path={path!r}: missing file {Path(missing.filename).name} "
                f"for the {split} split of {name}"
            ) from None
    table = dataset.with_format("arrow")[:]
    pixels = table.column("image").combine_chunks().flatten().to_numpy()
    labels = table.column("label").to_numpy().astype(np.int64)
    shape = SHAPES[name]
    if pixels.size != len(labels) * math.prod(shape):
        raise UserError(
            f"{name}/{split}: {pixels.size // max(len(labels), 1)} pixels per image, "
            f"expected {math.prod(shape)} {shape}"
        )
    return pixels.astype(np.uint8).reshape(len(labels), *shape), labels


def check_images(images: np.ndarray, shape: tuple[int, ...], what: str) -> None:
    if images.ndim != 4 or tuple(images.shape[1:]) != tuple(shape):
        raise UserError(f"{what}: images of shape {tuple(images.shape[1:])}, expected {shape}")


def scale(images: np.ndarray, mode: str) -> np.ndarray:
    """uint8 grey levels to float32 in [0, 1] (`unit`) or [-1, 1] (`symmetric`)."""
    x = images.astype(np.float32) / 255.0
    if mode == "unit":
        return x
    if mode == "symmetric":
        return 2.0 * x - 1.0
    raise UserError(f"data.scale={mode!r} is unknown; allowed: unit, symmetric")


def binarize(images01: np.ndarray, seed: int, step: int) -> np.ndarray:
    """A fresh Bernoulli draw of every pixel (dynamic binarization), keyed by (seed, step)."""
    rng = np.random.default_rng([seed, step, 0xB1])
    return (rng.random(images01.shape, dtype=np.float32) < images01).astype(np.float32)


@dataclass(frozen=True)
class ImageStream:
    """Epoch-wise shuffled batches of an in-memory image set."""

    images: np.ndarray
    labels: np.ndarray

    def indices(
        self, seed: int, step: int, batch_size: int, process_index: int = 0, process_count: int = 1
    ) -> np.ndarray:
        """This process's rows of global batch `step`."""
        count = len(self.images)
        positions = step * batch_size + np.arange(batch_size)
        epochs, offsets = np.divmod(positions, count)
        order = {
            e: np.random.default_rng([seed, int(e)]).permutation(count) for e in np.unique(epochs)
        }
        rows = np.array([order[e][o] for e, o in zip(epochs, offsets, strict=True)])
        share = batch_size // process_count
        return rows[process_index * share : (process_index + 1) * share]


@dataclass
class ImageData:
    """An image family's data: the training stream and the eval images, each present only when
    the caller asked for its split (see `train/data/splits.py`)."""

    name: str
    train: ImageStream | None = None
    eval_images: np.ndarray | None = None
    eval_labels: np.ndarray | None = None

    def train_stream(self) -> ImageStream:
        return loaded(self.train, TRAIN, f"data.name={self.name!r}")

    def eval_split(self) -> tuple[np.ndarray, np.ndarray]:
        images = loaded(self.eval_images, EVAL, f"data.name={self.name!r}")
        assert self.eval_labels is not None
        return images, self.eval_labels


def load_image_data(
    d: ml_collections.ConfigDict,
    splits: Splits,
    eval_split: str = "test",
    holdout_class: int = -1,
) -> ImageData:
    """The splits asked for of `data.name`: training images (without `holdout_class`) and the
    first `data.eval_examples` (> 0; else all) images of `eval_split`."""
    data = ImageData(d.name)
    if TRAIN in splits:
        images, labels = without_class(*load_split(d.name, d.path, "train"), holdout_class)
        data.train = ImageStream(images, labels)
    if EVAL in splits:
        images, labels = load_split(d.name, d.path, eval_split)
        count = d.get("eval_examples", 0)
        data.eval_images, data.eval_labels = (
            (images[:count], labels[:count]) if count > 0 else (images, labels)
        )
    return data


def check_num_classes(data: ImageData, num_classes: int) -> None:
    """A class-conditional model must have an embedding row for every training label."""
    if num_classes and data.train is not None and data.train.labels.max() >= num_classes:
        raise UserError(
            f"model.num_classes={num_classes} but {data.name} has labels up to "
            f"{data.train.labels.max()}; allowed: 0 (unconditional) or more than the largest label"
        )


def without_class(
    images: np.ndarray, labels: np.ndarray, holdout: int
) -> tuple[np.ndarray, np.ndarray]:
    """Drop one class (for anomaly detection: it is unseen in training); -1 keeps everything."""
    if holdout < 0:
        return images, labels
    if holdout not in set(labels.tolist()):
        raise UserError(
            f"data.holdout_class={holdout}: no such label; allowed: -1 or "
            f"{sorted(set(labels.tolist()))}"
        )
    keep = labels != holdout
    return images[keep], labels[keep]
