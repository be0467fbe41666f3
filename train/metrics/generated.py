"""FID and KID of a run's generated images against a dataset split (any image family).

The task supplies the images (`Task.sample_images`, `Task.reference_images`); the features come
from `train/metrics/fid.py`. Every score is returned with what it depends on: sample count,
reference split, resize filter and input type (clean-fid's list of what changes FID).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from train.metrics import fid
from train.tasks.base import Task

DEFAULT_CACHE = Path.home() / ".cache" / "genlab" / "fid"
# ../shared/data beside the checkout, where the project keeps its data.
DEFAULT_WEIGHTS = Path(__file__).resolve().parents[3] / "shared" / "data" / "fid_inception_v3"
KID_IMAGES = 2000  # per side; KID is unbiased, so a fixed subset size is enough


def kid_features_path(cache_dir: Path, name: str, split: str, count: int, fingerprint: str) -> Path:
    """Where the Inception features of a split's first `count` images are cached for KID."""
    return fid.statistics_cache_path(cache_dir, name, f"{split}-kid-features", count, fingerprint)


def generated_image_scores(
    task: Task,
    state: Any,
    num_samples: int,
    extractor: Any,
    cache_dir: Path = DEFAULT_CACHE,
    split: str = "test",
    seed: int = 0,
) -> dict[str, Any]:
    """FID and KID of `num_samples` model samples against the first `num_samples` images of
    the dataset's `split`."""
    fid.check_rank(num_samples, extractor.feature_dim)
    name = task.config.data.name
    fake = fid.RunningStatistics(extractor.feature_dim)
    fake_features = []
    for features in extractor.batches(task.sample_images(state, num_samples, seed)):
        fake.update(features)
        fake_features.append(features)
    reference = task.reference_images(split)  # loaded once for both scores
    mu, sigma = fid.reference_statistics(
        name, split, num_samples, lambda: reference, cache_dir, extractor
    )
    kid_count = min(num_samples, KID_IMAGES)
    kid_cache = kid_features_path(cache_dir, name, split, kid_count, extractor.fingerprint)
    if kid_cache.is_file():
        with np.load(kid_cache) as cached:
            real_features = cached["features"]
    else:  # Inception on the reference images is the slow part: do it once per split
        real_features = extractor(reference[:kid_count])
        fid.save_npz_atomic(kid_cache, features=real_features)
    kid_mean, kid_std = fid.kid(
        np.concatenate(fake_features)[:kid_count],
        real_features,
        subsets=10,
        subset_size=min(1000, kid_count),
    )
    return {
        "eval/fid": fid.frechet_distance(*fake.statistics(), mu, sigma),
        "eval/kid": kid_mean,
        "eval/kid_std": kid_std,
        "fid/num_samples": num_samples,
        "fid/reference": f"{name}/{split} (first {num_samples})",
        "fid/resize": "bilinear to 299x299, half-pixel centres, no antialiasing",
        "fid/inputs": "float32 in [0, 1] (not quantised to uint8)",
        "fid/weights_sha256": fid.WEIGHTS_SHA256[:12],
        **{f"fid/{key}": value for key, value in task.sampling_settings().items()},
    }


class SampleQuality:
    """FID and KID of a task's samples during training (`config.eval.fid_samples` > 0), with the
    Inception weights loaded once, on first use."""

    def __init__(self, weights_dir: str | Path = "", cache_dir: Path | None = None) -> None:
        self.weights_dir = Path(weights_dir) if weights_dir else DEFAULT_WEIGHTS
        self.cache_dir = cache_dir
        self._extractor: fid.FeatureExtractor | None = None

    def __call__(self, task: Task, state: Any, num_samples: int) -> dict[str, float]:
        if self._extractor is None:
            self._extractor = fid.FeatureExtractor(self.weights_dir)
        cache = self.cache_dir or DEFAULT_CACHE  # read at call time, so tests can redirect it
        scores = generated_image_scores(task, state, num_samples, self._extractor, cache)
        return {k: float(v) for k, v in scores.items() if k.startswith("eval/")}
