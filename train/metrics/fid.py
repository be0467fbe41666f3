"""Fréchet Inception Distance (Heusel et al., 2017) and Kernel Inception Distance
(Bińkowski et al., 2018) on the pool3 features of the FID Inception-v3.

Preprocessing follows pytorch-fid, whose numbers most papers report: bilinear resize to 299x299
with half-pixel centres and no antialiasing, grey repeated to RGB, then [0, 1] -> [-1, 1].
Statistics are accumulated in float64 because FID subtracts large, nearly equal traces.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from models import inception
from models.inception import FEATURE_DIM, INPUT_SIZE, WEIGHTS_SHA256, FIDInceptionV3
from train.errors import UserError

RANGE_TOLERANCE = 1e-3
INCEPTION_SCORE_NOTE = (
    "Inception Score is not available: the FID Inception weights stop at the 2048-d pool3 "
    "features and have no 1008-way classifier, so there are no logits to score"
)


def load_fid_weights(folder: str | Path) -> dict[str, Any]:
    """`models.inception.load_fid_weights`, with a missing or wrong weights file reported as a
    UserError (one line from the CLI): only the user can fetch the right file."""
    try:
        return inception.load_fid_weights(folder)
    except inception.WeightsError as error:
        raise UserError(str(error)) from error


def check_images(images: np.ndarray | jax.Array, check_values: bool = True) -> None:
    """UserError unless `images` is (N, H, W, C), C in {1, 3}, with values in [0, 1]."""
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise UserError(
            f"FID images have shape {tuple(images.shape)}; expected (N, H, W, C) with C in {{1, 3}}"
        )
    if check_values and images.size:
        low, high = float(np.min(images)), float(np.max(images))
        if not (low >= -RANGE_TOLERANCE and high <= 1 + RANGE_TOLERANCE):  # NaN fails too
            raise UserError(
                f"FID images have values in [{low:.4g}, {high:.4g}]; expected floats in [0, 1]"
            )


def _resize_and_scale(images: jax.Array) -> jax.Array:
    """The traceable part of `preprocess` (no value checks, which need concrete arrays)."""
    x = jnp.clip(jnp.asarray(images, jnp.float32), 0.0, 1.0)
    if x.shape[-1] == 1:
        x = jnp.repeat(x, 3, axis=-1)
    if x.shape[1:3] != (INPUT_SIZE, INPUT_SIZE):
        # antialias=False: plain triangle-kernel interpolation at half-pixel centres, with
        # out-of-image taps dropped and renormalised (= clamping), as torch's bilinear
        # F.interpolate(align_corners=False) does, also when downsampling.
        x = jax.image.resize(
            x, (x.shape[0], INPUT_SIZE, INPUT_SIZE, 3), method="bilinear", antialias=False
        )
    # Interpolation weights are renormalised in float32, so a constant 1 can come out as
    # 0.99999976 or 1.0000001; clipping keeps the documented range exact.
    return jnp.clip(2.0 * x - 1.0, -1.0, 1.0)


def preprocess(images: np.ndarray | jax.Array) -> jax.Array:
    """[0, 1] images (N, H, W, 1 or 3) -> (N, 299, 299, 3) float32 in [-1, 1] for the network.

    Values are checked only for concrete arrays (inside `jit` they cannot be inspected).
    """
    if not isinstance(images, np.ndarray | jax.Array):
        images = np.asarray(images, np.float32)
    check_images(images, check_values=not isinstance(images, jax.core.Tracer))
    return _resize_and_scale(images)


class FeatureExtractor:
    """Jit-compiled preprocess + FID Inception in fixed-size batches (the last batch is padded,
    so one compilation serves any number of images).

    Each batch is split over this process's devices. On a CPU split into one XLA device per core
    that is faster than one device with an intra-op thread per core (2 cores, batch 50: 2.6 vs
    3.4 s per batch), as XLA's CPU backend leaves cores idle between and inside small operations;
    `benchmarks/fid_speed.py` has the profile.
    """

    #: names the features in cache keys, so features of another extractor are never reused
    fingerprint = f"inception-{WEIGHTS_SHA256[:12]}"
    feature_dim = FEATURE_DIM

    def __init__(self, weights_dir: str | Path, batch_size: int = 50) -> None:
        if batch_size < 1:
            raise UserError(f"FID batch_size is {batch_size}; expected an integer >= 1")
        devices = jax.local_devices()
        self.batch_size = -(-batch_size // len(devices)) * len(devices)
        mesh = Mesh(np.asarray(devices), ("batch",))
        whole, rows = (
            NamedSharding(mesh, PartitionSpec()),
            NamedSharding(mesh, PartitionSpec("batch")),
        )
        self.variables = jax.device_put(load_fid_weights(weights_dir), whole)
        model = FIDInceptionV3()

        def forward(variables, images: jax.Array) -> jax.Array:
            return model.apply(variables, _resize_and_scale(images))

        self._forward = jax.jit(forward, in_shardings=(whole, rows), out_shardings=rows)

    def _batch(self, images: np.ndarray) -> np.ndarray:
        count = images.shape[0]
        if count < self.batch_size:
            pad = np.zeros((self.batch_size - count, *images.shape[1:]), images.dtype)
            images = np.concatenate([images, pad])
        return np.asarray(self._forward(self.variables, images), np.float64)[:count]

    def batches(self, images: np.ndarray | Iterable[np.ndarray]) -> Iterable[np.ndarray]:
        """Features of an array of images, or of an iterable of image arrays, batch by batch."""
        chunks = [images] if isinstance(images, np.ndarray | jax.Array) else images
        for chunk in chunks:
            chunk = np.asarray(chunk, np.float32)
            check_images(chunk)
            for start in range(0, chunk.shape[0], self.batch_size):
                yield self._batch(chunk[start : start + self.batch_size])

    def __call__(self, images: np.ndarray | Iterable[np.ndarray]) -> np.ndarray:
        """(N, 2048) float64 features of [0, 1] images (N, H, W, 1 or 3)."""
        parts = list(self.batches(images))
        return np.concatenate(parts) if parts else np.zeros((0, FEATURE_DIM))


class RunningStatistics:
    """Mean and unbiased covariance of feature rows seen in batches, without keeping them.

    Sums are float64; features are centred on the first batch's mean before accumulating, which
    keeps the sum-of-outer-products formula from cancelling catastrophically.
    """

    def __init__(self, dims: int = FEATURE_DIM) -> None:
        self.dims = dims
        self.count = 0
        self._shift: np.ndarray | None = None
        self._sum = np.zeros(dims, np.float64)
        self._outer = np.zeros((dims, dims), np.float64)

    def update(self, features: np.ndarray) -> None:
        features = np.asarray(features, np.float64)
        if features.ndim != 2 or features.shape[1] != self.dims:
            raise UserError(f"features have shape {features.shape}; expected (N, {self.dims})")
        if not len(features):
            return
        if self._shift is None:
            self._shift = features.mean(axis=0)
        centred = features - self._shift
        self.count += len(features)
        self._sum += centred.sum(axis=0)
        self._outer += centred.T @ centred

    def mean(self) -> np.ndarray:
        if self.count == 0:
            raise UserError("no features were accumulated: got 0 samples")
        return self._shift + self._sum / self.count

    def covariance(self) -> np.ndarray:
        """Unbiased (divides by N - 1), like `numpy.cov(features, rowvar=False)`."""
        if self.count < 2:
            raise UserError(f"a covariance needs at least 2 samples: got {self.count}")
        centred_mean = self._sum / self.count
        scatter = self._outer - self.count * np.outer(centred_mean, centred_mean)
        return scatter / (self.count - 1)

    def statistics(self) -> tuple[np.ndarray, np.ndarray]:
        return self.mean(), self.covariance()


def check_rank(count: int, dims: int = FEATURE_DIM) -> None:
    """UserError when fewer than dims + 1 samples: the covariance would be singular and FID
    unreliable (the usual 'use at least 2048 images' rule, made exact)."""
    if count < dims + 1:
        raise UserError(
            f"too few samples for a full-rank covariance: got {count}, need at least {dims + 1}"
        )


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, eps: float = 1e-6
) -> float:
    """||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)) between two Gaussians.

    sqrtm of a product of near-singular covariances can come back non-finite or with tiny
    imaginary parts from round-off; then eps*I is added to both covariances and the imaginary
    part (which must be negligible) dropped.
    """
    mu1, mu2 = (
        np.atleast_1d(np.asarray(mu1, np.float64)),
        np.atleast_1d(np.asarray(mu2, np.float64)),
    )
    sigma1 = np.atleast_2d(np.asarray(sigma1, np.float64))
    sigma2 = np.atleast_2d(np.asarray(sigma2, np.float64))
    dims = mu1.shape[0]
    if mu1.shape != mu2.shape or sigma1.shape != (dims, dims) or sigma2.shape != (dims, dims):
        raise UserError(
            f"FID statistics disagree in shape: mu {mu1.shape} vs {mu2.shape}, sigma "
            f"{sigma1.shape} vs {sigma2.shape}; expected (d,) means and (d, d) covariances"
        )
    diff = mu1 - mu2
    covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
    if not np.all(np.isfinite(covmean)):
        offset = eps * np.eye(dims)
        covmean = scipy.linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        largest = float(np.max(np.abs(np.diagonal(covmean).imag)))
        if largest > 1e-3:
            raise FloatingPointError(
                f"sqrtm(S1 S2) has an imaginary diagonal component of {largest:.3g}; the "
                "covariances are probably singular (too few samples?)"
            )
        covmean = covmean.real
    distance = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean)
    return float(distance)


def _polynomial_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """k(x, y) = (x.y / d + 1)^3, the KID kernel."""
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def kid(
    features1: np.ndarray,
    features2: np.ndarray,
    subsets: int = 100,
    subset_size: int = 1000,
    seed: int = 0,
) -> tuple[float, float]:
    """Kernel Inception Distance: unbiased MMD^2 with the cubic polynomial kernel, averaged over
    `subsets` random subsets (without replacement) of `subset_size` rows from each set.

    Returns (mean, std) over the subsets. Unbiased, so it can be slightly negative for equal
    distributions; unlike FID it has no bias that depends on the sample size.
    """
    x_all, y_all = np.asarray(features1, np.float64), np.asarray(features2, np.float64)
    if x_all.ndim != 2 or y_all.ndim != 2 or x_all.shape[1] != y_all.shape[1]:
        raise UserError(
            f"KID features have shapes {x_all.shape} and {y_all.shape}; expected (N, d) and (M, d)"
        )
    smallest = min(len(x_all), len(y_all))
    if not 2 <= subset_size <= smallest:
        raise UserError(
            f"KID subset_size is {subset_size}; expected 2 <= subset_size <= {smallest} "
            "(the smaller feature set)"
        )
    if subsets < 1:
        raise UserError(f"KID subsets is {subsets}; expected an integer >= 1")
    rng = np.random.default_rng(seed)
    m = subset_size
    scores = np.empty(subsets)
    for i in range(subsets):
        x = x_all[rng.choice(len(x_all), m, replace=False)]
        y = y_all[rng.choice(len(y_all), m, replace=False)]
        k_xx, k_yy, k_xy = (
            _polynomial_kernel(x, x),
            _polynomial_kernel(y, y),
            _polynomial_kernel(x, y),
        )
        within = (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
        scores[i] = within - 2.0 * k_xy.mean()
    return float(scores.mean()), float(scores.std())


def inception_score(*args: object, **kwargs: object) -> float:
    """Always raises: see INCEPTION_SCORE_NOTE."""
    raise UserError(INCEPTION_SCORE_NOTE)


def statistics_cache_path(
    cache_dir: str | Path, name: str, split: str, count: int, fingerprint: str
) -> Path:
    """Cache file named by everything the statistics depend on (dataset, split, count and the
    extractor's fingerprint, which holds the weights checksum), so changing any of them can
    never silently reuse stale numbers."""
    safe = [re.sub(r"[^A-Za-z0-9._-]+", "_", part) for part in (name, split, fingerprint)]
    return Path(cache_dir) / f"fid-{safe[0]}-{safe[1]}-{count}-{safe[2]}.npz"


def reference_statistics(
    name: str,
    split: str,
    count: int,
    images_fn: Callable[[], np.ndarray | Iterable[np.ndarray]],
    cache_dir: str | Path,
    extractor: FeatureExtractor,
) -> tuple[np.ndarray, np.ndarray]:
    """(mu, sigma) of the first `count` images of a dataset split, from the cache or computed.

    `images_fn` is only called on a cache miss; it returns [0, 1] images (N, H, W, C) as one
    array or an iterable of arrays, of which the first `count` are used.
    """
    check_rank(count, extractor.feature_dim)
    path = statistics_cache_path(cache_dir, name, split, count, extractor.fingerprint)
    if path.is_file():
        with np.load(path) as cached:
            return np.asarray(cached["mu"]), np.asarray(cached["sigma"])
    stats = RunningStatistics(extractor.feature_dim)
    for features in extractor.batches(_first(images_fn(), count)):
        stats.update(features)
    if stats.count < count:
        raise UserError(
            f"dataset {name!r} split {split!r} has {stats.count} images; the FID reference "
            f"needs count={count}"
        )
    mu, sigma = stats.statistics()
    save_npz_atomic(path, mu=mu, sigma=sigma, count=count, weights_sha256=WEIGHTS_SHA256)
    return mu, sigma


def save_npz_atomic(path: Path, **arrays: Any) -> None:
    """Write an .npz through a temporary name and a rename, so a crash never leaves a truncated
    cache file behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial.npz")
    np.savez(partial, **arrays)
    partial.replace(path)


def _first(images: np.ndarray | Iterable[np.ndarray], count: int) -> Iterable[np.ndarray]:
    """The first `count` images of an array or of an iterable of arrays, chunk by chunk."""
    chunks = [images] if isinstance(images, np.ndarray | jax.Array) else images
    left = count
    for chunk in chunks:
        if left <= 0:
            return
        chunk = np.asarray(chunk)
        yield chunk[:left]
        left -= min(left, chunk.shape[0])


def fid_from_features(features1: np.ndarray, features2: np.ndarray) -> float:
    """FID between two feature sets; both must have enough rows for a full-rank covariance."""
    for features in (features1, features2):
        check_rank(len(features), features.shape[1])
    mu1, sigma1 = np.mean(features1, axis=0), np.cov(features1, rowvar=False)
    mu2, sigma2 = np.mean(features2, axis=0), np.cov(features2, rowvar=False)
    return frechet_distance(mu1, sigma1, mu2, sigma2)
