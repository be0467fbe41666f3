"""FID between real image sets, as reference points: `python benchmarks/fid_reference.py`.

FID(MNIST train, MNIST test) is about what a perfect MNIST generator scores at that sample
count (the two splits come from the same distribution); FID(MNIST test, Fashion-MNIST test) is
what an entirely wrong one scores. Each set's statistics (and the first 2,000 feature rows, for
KID) go into the cache that `genlab eval --metric fid` reads, so model evaluations against these
splits reuse them. Writes `benchmarks/results/fid_reference.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SETS = (("mnist", "train"), ("mnist", "test"), ("fashion_mnist", "test"))
PAIRS = ((("mnist", "train"), ("mnist", "test")), (("mnist", "test"), ("fashion_mnist", "test")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(REPO.parent / "shared/data"))
    parser.add_argument("--count", type=int, default=10_000, help="first N images of each set")
    parser.add_argument("--out", default=str(REPO / "benchmarks/results/fid_reference.json"))
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0))
    os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={cores}"

    from train.data import images as image_data
    from train.metadata import collect
    from train.metrics import fid
    from train.metrics.generated import (
        DEFAULT_CACHE,
        DEFAULT_WEIGHTS,
        KID_IMAGES,
        kid_features_path,
    )

    fid.check_rank(args.count)
    extractor = fid.FeatureExtractor(DEFAULT_WEIGHTS)
    statistics, kid_features, seconds = {}, {}, {}
    for name, split in SETS:  # a set already in the cache is read back, so a rerun resumes
        path = fid.statistics_cache_path(
            DEFAULT_CACHE, name, split, args.count, extractor.fingerprint
        )
        kid_path = kid_features_path(DEFAULT_CACHE, name, split, KID_IMAGES, extractor.fingerprint)
        if not (path.is_file() and kid_path.is_file()):
            pixels, _ = image_data.load_split(name, f"{args.data}/{name}", split)
            started = time.perf_counter()
            rows = extractor(image_data.scale(pixels[: args.count], "unit"))
            seconds[f"{name}/{split}"] = round(time.perf_counter() - started, 1)
            mu, sigma = rows.mean(axis=0), np.cov(rows, rowvar=False)
            fid.save_npz_atomic(
                path, mu=mu, sigma=sigma, count=args.count, weights_sha256=fid.WEIGHTS_SHA256
            )
            fid.save_npz_atomic(kid_path, features=rows[:KID_IMAGES])
            print(f"{name}/{split}: {len(rows)} images in {seconds[f'{name}/{split}']} s")
        with np.load(path) as cached:
            statistics[name, split] = (cached["mu"], cached["sigma"])
        with np.load(kid_path) as cached:
            kid_features[name, split] = cached["features"]

    pairs = []
    for a, b in PAIRS:
        kid_mean, kid_std = fid.kid(kid_features[a], kid_features[b], subsets=10, subset_size=1000)
        pairs.append(
            {
                "a": "/".join(a),
                "b": "/".join(b),
                "fid": round(fid.frechet_distance(*statistics[a], *statistics[b]), 3),
                "kid": round(kid_mean, 5),
                "kid_std": round(kid_std, 5),
            }
        )
    total = sum(seconds.values())
    result = {
        "benchmark": "FID between real image sets (reference points for model scores)",
        "images_per_set": args.count,
        "which_images": "the first N of each split, in file order",
        "fid_resize": "bilinear to 299x299, half-pixel centres, no antialiasing (pytorch-fid)",
        "fid_inputs": "float32 in [0, 1] (not quantised to uint8)",
        "kid": "cubic polynomial kernel, 10 subsets of 1,000 from the first 2,000 of each set",
        "pairs": pairs,
        "inception_seconds": seconds,  # sets computed by this run (others came from the cache)
        "seconds_per_image": round(total / (len(seconds) * args.count), 4) if seconds else None,
        "xla_cpu_devices": cores,
        "environment": collect(sys.argv),
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(pairs, indent=2))


if __name__ == "__main__":
    main()
