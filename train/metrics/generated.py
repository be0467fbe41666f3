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
    fid.check_rank(num_samples)
    name = task.config.data.name
    fake = fid.RunningStatistics()
    fake_features = []
    for features in extractor.batches(task.sample_images(state, num_samples, seed)):
        fake.update(features)
        fake_features.append(features)
    mu, sigma = fid.reference_statistics(
        name, split, num_samples, lambda: task.reference_images(split), cache_dir, extractor
    )
    real_features = extractor(fid._first(task.reference_images(split), min(num_samples, 2000)))
    kid_mean, kid_std = fid.kid(
        np.concatenate(fake_features)[:2000],
        real_features,
        subsets=10,
        subset_size=min(1000, len(real_features)),
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
    }
