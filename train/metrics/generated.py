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
KID_IMAGES = 2000  # per side; KID is unbiased, so a fixed subset size is enough


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
    reference = task.reference_images(split)  # loaded once for both scores
    mu, sigma = fid.reference_statistics(
        name, split, num_samples, lambda: reference, cache_dir, extractor
    )
    kid_count = min(num_samples, KID_IMAGES)
    kid_cache = fid.statistics_cache_path(cache_dir, name, f"{split}-kid-features", kid_count)
    if kid_cache.is_file():
        with np.load(kid_cache) as cached:
            real_features = cached["features"]
    else:  # Inception on the reference images is the slow part: do it once per split
        real_features = extractor(reference[:kid_count])
        kid_cache.parent.mkdir(parents=True, exist_ok=True)
        partial = kid_cache.with_name(kid_cache.name + ".partial.npz")
        np.savez(partial, features=real_features)
        partial.replace(kid_cache)
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
    }
