"""FID evaluator: the Inception port against a NumPy reference, preprocessing, the statistics
and the distances, and the user-facing errors."""

from __future__ import annotations

import json
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models import inception
from models.inception import (
    WEIGHTS_FILE,
    WEIGHTS_SHA256,
    Block35,
    ConvBN,
    FIDInceptionV3,
    conv2d,
)
from train.errors import UserError
from train.metrics.fid import (
    FeatureExtractor,
    RunningStatistics,
    check_rank,
    frechet_distance,
    inception_score,
    kid,
    load_fid_weights,
    preprocess,
    reference_statistics,
    statistics_cache_path,
)

WEIGHTS = Path(__file__).resolve().parents[2] / "shared/data/fid_inception_v3"
EPS = 1e-3


@pytest.fixture(scope="module")
def variables() -> dict:
    return load_fid_weights(WEIGHTS)


@pytest.fixture(scope="module")
def raw() -> dict[str, np.ndarray]:
    """The stem conv and Mixed_5b arrays as stored (OIHW kernels), read independently of
    `load_fid_weights` for the NumPy reference (only these members are decompressed)."""
    with np.load(WEIGHTS / WEIGHTS_FILE) as npz:
        wanted = [key for key in npz.files if key.startswith(("conv/", "mixed/"))]
        return {key: npz[key].astype(np.float64) for key in wanted}


@pytest.fixture(scope="module")
def layers() -> dict:
    return json.loads((WEIGHTS / "layers.json").read_text())["layers"]


# ---- NumPy reference ---------------------------------------------------------------------------


def _pair(value: int | list[int]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (value[0], value[1])


def np_conv_bn_relu(x: np.ndarray, raw: dict, layers: dict, name: str) -> np.ndarray:
    """NHWC float64 conv over explicit patches, then the frozen BN without scale, then ReLU."""
    weight = raw[f"{name}/weight"]  # OIHW
    stride = layers[name]["stride"]
    ph, pw = _pair(layers[name]["padding"])
    _, _, kh, kw = weight.shape
    padded = np.pad(x, ((0, 0), (ph, ph), (pw, pw), (0, 0)))
    patches = np.lib.stride_tricks.sliding_window_view(padded, (kh, kw), axis=(1, 2))
    patches = patches[:, ::stride, ::stride]  # (N, H', W', C, kh, kw)
    y = np.einsum("nhwcij,ocij->nhwo", patches, weight)
    y = (y - raw[f"{name}/mean"]) / np.sqrt(raw[f"{name}/var"] + EPS) + raw[f"{name}/beta"]
    return np.maximum(y, 0.0)


def np_avg_pool_exclude_padding(x: np.ndarray) -> np.ndarray:
    _, h, w, _ = x.shape
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    ones = np.pad(np.ones((h, w)), 1)
    total = np.zeros_like(x)
    count = np.zeros((h, w))
    for di in range(3):
        for dj in range(3):
            total += padded[:, di : di + h, dj : dj + w]
            count += ones[di : di + h, dj : dj + w]
    return total / count[None, :, :, None]


def np_block35(x: np.ndarray, raw: dict, layers: dict, block: str) -> np.ndarray:
    def conv(name: str, inp: np.ndarray) -> np.ndarray:
        return np_conv_bn_relu(inp, raw, layers, f"{block}/{name}")

    branch = conv("conv", x)
    tower = conv("tower/conv_1", conv("tower/conv", x))
    tower_1 = conv("tower_1/conv_2", conv("tower_1/conv_1", conv("tower_1/conv", x)))
    tower_2 = conv("tower_2/conv", np_avg_pool_exclude_padding(x))
    return np.concatenate([branch, tower, tower_1, tower_2], axis=-1)


def np_resize_bilinear(x: np.ndarray, size: int) -> np.ndarray:
    """torch F.interpolate(mode='bilinear', align_corners=False), written out for NHWC."""

    def axis_weights(n_in: int) -> np.ndarray:
        matrix = np.zeros((size, n_in))
        for i in range(size):
            src = max((i + 0.5) * n_in / size - 0.5, 0.0)
            lo = min(int(np.floor(src)), n_in - 1)
            hi = min(lo + 1, n_in - 1)
            frac = src - lo
            matrix[i, lo] += 1.0 - frac
            matrix[i, hi] += frac
        return matrix

    rows, cols = axis_weights(x.shape[1]), axis_weights(x.shape[2])
    return np.einsum("ih,nhwc,jw->nijc", rows, x, cols, optimize=True)


# ---- the network -------------------------------------------------------------------------------


def test_parameter_tree_and_layer_specs_match_the_weights(variables, layers):
    """Every layer of the Flax module has the kernel, stride and padding that layers.json lists,
    and the params tree has exactly the npz's names and (transposed) shapes."""
    seen: dict[str, dict] = {}

    def record(next_fun, args, kwargs, context):
        module = context.module
        if isinstance(module, ConvBN) and context.method_name == "__call__":
            seen["/".join(module.scope.path)] = {
                "weight_shape_OIHW": [
                    module.features,
                    args[0].shape[-1],
                    *module.kernel,
                ],
                "stride": module.stride,
                "padding": list(module.padding),
            }
        return next_fun(*args, **kwargs)

    x = jax.ShapeDtypeStruct((1, 299, 299, 3), jnp.float32)
    with nn.intercept_methods(record):
        shapes = jax.eval_shape(FIDInceptionV3().init, jax.random.key(0), x)
    assert list(seen) == list(layers)  # same layers, same network order
    for name, spec in layers.items():
        expected = dict(spec, padding=list(_pair(spec["padding"])))
        del expected["pytorch_fid_name"]
        assert seen[name] == expected, name
    expected_tree = jax.tree.map(lambda a: a.shape, shapes)
    assert jax.tree.map(lambda a: a.shape, variables) == expected_tree


def test_stem_conv_matches_numpy(variables, raw, layers):
    x = np.random.default_rng(0).uniform(-1, 1, (2, 31, 31, 3))
    ours = ConvBN(32, (3, 3), stride=2).apply(
        {"params": variables["params"]["conv"]}, jnp.asarray(x, jnp.float32)
    )
    reference = np_conv_bn_relu(x, raw, layers, "conv")
    assert ours.shape == reference.shape == (2, 15, 15, 32)
    np.testing.assert_allclose(ours, reference, rtol=1e-4, atol=1e-4 * np.abs(reference).max())


def test_mixed_block_matches_numpy(variables, raw, layers):
    """Mixed_5b on a random 35x35x192 input: four towers, concat order, avg pool w/o padding."""
    x = np.abs(np.random.default_rng(1).normal(size=(1, 35, 35, 192)))  # post-ReLU-like
    ours = Block35(32).apply({"params": variables["params"]["mixed"]}, jnp.asarray(x, jnp.float32))
    reference = np_block35(x, raw, layers, "mixed")
    assert ours.shape == reference.shape == (1, 35, 35, 256)
    np.testing.assert_allclose(ours, reference, rtol=1e-4, atol=1e-4 * np.abs(reference).max())


@pytest.mark.parametrize(
    ("kernel", "stride", "padding", "channels"),
    [
        ((3, 3), 1, (0, 0), 5),  # 'same', cropped
        ((3, 3), 1, (1, 1), 5),
        ((1, 7), 1, (0, 3), 5),
        ((1, 1), 1, (0, 0), 5),  # a matmul
        ((3, 3), 2, (0, 0), 5),  # thin: the plain convolution
        ((3, 3), 2, (0, 0), 192),  # gathered patches, one matmul
    ],
)
def test_conv2d_matches_the_plain_convolution(kernel, stride, padding, channels):
    """Each of conv2d's CPU formulations computes the convolution it replaces."""
    rng = np.random.default_rng(11)
    x = jnp.asarray(rng.uniform(-1, 1, (2, 13, 12, channels)), jnp.float32)
    weight = jnp.asarray(rng.normal(size=(*kernel, channels, 7)), jnp.float32)
    highest = jax.lax.Precision.HIGHEST
    ours = conv2d(x, weight, stride, padding, highest)
    plain = jax.lax.conv_general_dilated(
        x,
        weight,
        (stride, stride),
        [(p, p) for p in padding],
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        precision=highest,
    )
    assert ours.shape == plain.shape
    np.testing.assert_allclose(ours, plain, rtol=1e-5, atol=1e-5 * np.abs(plain).max())


def test_full_network_features(tmp_path):
    rng = np.random.default_rng(2)
    images = rng.uniform(0, 1, (2, 299, 299, 3)).astype(np.float32)
    extractor = FeatureExtractor(WEIGHTS, batch_size=2)
    features = extractor(images)
    assert features.shape == (2, 2048) and features.dtype == np.float64
    assert np.all(np.isfinite(features)) and np.all(features >= 0)  # ReLU, then an average
    assert not np.allclose(features[0], features[1])
    twice = extractor(images[[0, 0]])
    np.testing.assert_array_equal(twice[0], twice[1])
    np.testing.assert_allclose(twice[0], features[0], rtol=1e-6, atol=1e-7)


# ---- weights -----------------------------------------------------------------------------------


def test_checksum_mismatch_is_a_user_error(tmp_path):
    (tmp_path / WEIGHTS_FILE).write_bytes(b"not the inception weights")
    with pytest.raises(UserError, match="sha256"):
        load_fid_weights(tmp_path)


def test_missing_weights_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_fid_weights(tmp_path / "nowhere")


def test_the_model_module_raises_its_own_error(tmp_path):
    """models/ imports nothing from train/: it raises WeightsError, which fid makes a UserError."""
    with pytest.raises(inception.WeightsError, match="does not exist") as raised:
        inception.load_fid_weights(tmp_path / "nowhere")
    assert not isinstance(raised.value, UserError)


# ---- preprocessing -----------------------------------------------------------------------------


def test_grey_images_become_three_identical_channels():
    grey = np.random.default_rng(3).uniform(0, 1, (2, 28, 28, 1)).astype(np.float32)
    out = np.asarray(preprocess(grey))
    assert out.shape == (2, 299, 299, 3) and out.dtype == np.float32
    assert out.min() >= -1 and out.max() <= 1
    np.testing.assert_array_equal(out[..., 0], out[..., 1])
    np.testing.assert_array_equal(out[..., 0], out[..., 2])
    assert np.asarray(preprocess(np.zeros((1, 8, 8, 3)))).max() == -1
    assert np.asarray(preprocess(np.ones((1, 8, 8, 3)))).min() == pytest.approx(1, abs=1e-6)


@pytest.mark.parametrize("size", [28, 64, 500])
def test_resize_is_torch_bilinear_without_antialiasing(size):
    """Half-pixel centres, clamped edges, no low-pass filter even when downsampling (500).

    Differences up to ~1e-4 are float32 round-off in the sample positions (JAX, like torch,
    computes them in float32); a wrong convention or antialiasing would differ by ~0.1."""
    images = np.random.default_rng(size).uniform(0, 1, (1, size, size, 3))
    reference = 2 * np_resize_bilinear(images, 299) - 1
    np.testing.assert_allclose(preprocess(images.astype(np.float32)), reference, atol=2e-4)


@pytest.mark.parametrize(
    ("images", "match"),
    [
        (np.zeros((28, 28, 1)), "shape"),
        (np.zeros((1, 28, 28, 2)), "shape"),
        (np.full((1, 28, 28, 1), 1.5), "values"),
        (np.full((1, 28, 28, 3), -0.1), "values"),
        (np.full((1, 28, 28, 3), np.nan), "values"),
    ],
)
def test_bad_images_are_user_errors(images, match):
    with pytest.raises(UserError, match=match):
        preprocess(images)


# ---- statistics and distances ------------------------------------------------------------------


def test_running_statistics_match_numpy():
    features = np.random.default_rng(4).normal(5.0, 2.0, (300, 16))
    stats = RunningStatistics(dims=16)
    for part in np.array_split(features, 7):
        stats.update(part)
    mu, sigma = stats.statistics()
    np.testing.assert_allclose(mu, features.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(sigma, np.cov(features, rowvar=False), rtol=1e-10, atol=1e-12)


def test_frechet_distance_of_a_set_with_itself_is_zero():
    features = np.random.default_rng(5).normal(size=(500, 32))
    mu, sigma = features.mean(axis=0), np.cov(features, rowvar=False)
    assert abs(frechet_distance(mu, sigma, mu, sigma)) < 1e-8


def test_frechet_distance_closed_form_for_diagonal_gaussians():
    rng = np.random.default_rng(6)
    mu1, mu2 = rng.normal(size=8), rng.normal(size=8)
    s1, s2 = rng.uniform(0.1, 3, 8), rng.uniform(0.1, 3, 8)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(s1 + s2 - 2 * np.sqrt(s1 * s2))
    actual = frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2))
    assert actual == pytest.approx(expected, rel=1e-10)
    # Symmetric, and only the mean term is left for equal covariances.
    assert frechet_distance(mu2, np.diag(s2), mu1, np.diag(s1)) == pytest.approx(expected)
    assert frechet_distance(mu1, np.diag(s1), mu2, np.diag(s1)) == pytest.approx(
        np.sum((mu1 - mu2) ** 2)
    )


def test_frechet_distance_survives_singular_covariances():
    features = np.random.default_rng(7).normal(size=(10, 32))  # rank 9 < 32
    mu, sigma = features.mean(axis=0), np.cov(features, rowvar=False)
    value = frechet_distance(mu, sigma, mu + 1.0, sigma)
    assert np.isfinite(value) and value == pytest.approx(32.0, abs=1e-2)


def test_kid_is_zero_for_the_same_set_and_grows_with_a_shift():
    rng = np.random.default_rng(8)
    features, other = np.abs(rng.normal(size=(2, 300, 2048)))
    # The same set: subsets drawn from one pool share rows, whose large k(x, x) enters the
    # cross term, so the unbiased estimate is slightly negative (-0.02 here), never positive.
    itself, _ = kid(features, features, subsets=10, subset_size=100, seed=0)
    same, same_std = kid(features, other, subsets=10, subset_size=100, seed=0)
    shifted, _ = kid(features, other + 0.5, subsets=10, subset_size=100, seed=0)
    assert -0.05 < itself <= 0
    assert abs(same) < 3 * same_std + 1e-3  # another sample of the same distribution
    assert shifted > 1.0 > 100 * abs(same)
    with pytest.raises(UserError, match="subset_size"):
        kid(features, features, subsets=2, subset_size=301)


def test_check_rank():
    check_rank(2049)
    with pytest.raises(UserError, match="got 2048, need at least 2049"):
        check_rank(2048)


def test_inception_score_is_unavailable():
    with pytest.raises(UserError, match="Inception Score is not available"):
        inception_score(np.zeros((1, 299, 299, 3)))


class _FakeExtractor:
    """Cheap stand-in for FeatureExtractor: features are a fixed function of the pixels."""

    fingerprint = "fake-projection"
    feature_dim = 2048

    def __init__(self) -> None:
        self.calls = 0
        self.projection = np.random.default_rng(9).normal(size=(4, 2048))

    def batches(self, images):
        for chunk in images:
            self.calls += 1
            yield chunk.reshape(len(chunk), -1) @ self.projection


def test_reference_statistics_are_cached_by_name_split_count_and_weights(tmp_path):
    images = np.random.default_rng(10).uniform(0, 1, (2100, 2, 2, 1))
    loads = []

    def images_fn():
        loads.append(1)
        return iter(np.array_split(images, 3))

    extractor = _FakeExtractor()
    mu, sigma = reference_statistics("mnist", "test", 2049, images_fn, tmp_path, extractor)
    features = images[:2049].reshape(2049, -1) @ extractor.projection
    np.testing.assert_allclose(mu, features.mean(axis=0), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(sigma, np.cov(features, rowvar=False), rtol=1e-7, atol=1e-9)
    path = statistics_cache_path(tmp_path, "mnist", "test", 2049, extractor.fingerprint)
    assert path.is_file() and extractor.fingerprint in path.name
    assert FeatureExtractor.fingerprint.endswith(WEIGHTS_SHA256[:12])
    assert "mnist" in path.name and "test" in path.name and "2049" in path.name
    again = reference_statistics("mnist", "test", 2049, images_fn, tmp_path, extractor)
    assert len(loads) == 1
    np.testing.assert_array_equal(again[0], mu)
    with pytest.raises(UserError, match="need at least 2049"):
        reference_statistics("mnist", "test", 100, images_fn, tmp_path, extractor)
    with pytest.raises(UserError, match="count=3000"):
        reference_statistics("mnist", "test", 3000, images_fn, tmp_path, extractor)
