"""FID and KID of a run's generated images against a dataset split (any image family).

The task supplies the images through its declared capabilities (`ImageSampler`,
`ReferenceImages` in train/capabilities.py); the features come from `train/metrics/fid.py`. Every
score is returned with what it depends on: sample count, reference split, resize filter and input
type (clean-fid's list of what changes FID).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import numpy as np

from train.capabilities import ImageSampler, ReferenceImages
from train.metrics import fid

DEFAULT_CACHE = Path.home() / ".cache" / "genlab" / "fid"
# ../shared/data beside the checkout, where the project keeps its data.
DEFAULT_WEIGHTS = Path(__file__).resolve().parents[3] / "shared" / "data" / "fid_inception_v3"
KID_IMAGES = 2000  # per side; KID is unbiased, so a fixed subset size is enough


def kid_features_path(cache_dir: Path, name: str, split: str, count: int, fingerprint: str) -> Path:
    """Where the Inception features of a split's first `count` images are cached for KID."""
    return fid.statistics_cache_path(cache_dir, name, f"{split}-kid-features", count, fingerprint)


class ImageTask(ImageSampler, ReferenceImages, Protocol):
    """A task that both samples images and has the dataset's images (the FID evaluator's need)."""


def generated_image_scores(
    task: ImageTask,
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
    name = task.dataset_name()
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
