"""The Inception-v3 network used for FID (the 2015-12-05 TensorFlow graph), up to pool3.

FID is only comparable across papers when every number comes from the same network with the
same weights, so this module reproduces that graph layer for layer rather than the torchvision
Inception-v3: 35x35 and 17x17 pooling branches average without counting padding, and the last
block (mixed_10) pools with a max instead of an average. Submodule and parameter names follow the
graph's layer names (`mixed_9/tower_1/mixed/conv_1/weight` is
`params["mixed_9"]["tower_1"]["mixed"]["conv_1"]["weight"]`), so every array can be traced back
to its key in the weights file. Weights: see `load_fid_weights` and the `fid_inception_v3`
section of the shared data README.

Speed on CPU (profiled on 2 cores, batch 50; `benchmarks/fid_speed.py --profile`): the convs
are ~97% of the time, and XLA's CPU convolution is fast (200-350 GFLOP/s) only for stride 1 with
'same' padding. The graph's unpadded stride-1 and strided layers ran at 20-90 GFLOP/s (conv_1
0.42 s, conv_4 0.74 s, mixed_3/conv 0.33 s per batch). `conv2d` therefore runs unpadded stride-1
layers as 'same' and crops (bit-identical), 1x1 layers as a matmul, and strided layers with many
input channels as one matmul over gathered patches: the convs went from 3.5-3.7 to 2.4 s a batch.
Tried and not used: NCHW (slower for every layer), folding the frozen batch norm into the
kernels (XLA already fuses it into the conv's output loop: no measurable gain), default instead
of HIGHEST precision (the same time and numbers on CPU; see FIDInceptionV3 for accelerators),
zero-padding channels to multiples of 32 or 64 (slower), gathered patches for stride-1 layers
(1.6-4.6x slower than 'same' and crop).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

WEIGHTS_FILE = "inception-2015-12-05-fid-pool3.npz"
WEIGHTS_SHA256 = "5082358eca21ba761930adaa3e93b0315e992926225f64d07d59908c4da28217"
BN_EPSILON = 1e-3
FEATURE_DIM = 2048
INPUT_SIZE = 299

# Strided layers with at least this many input channels run as one matmul over gathered
# patches: the matmul is then large enough to pay for copying the input k*k times (mixed_3/conv,
# 288 channels: 332 -> 164 ms per batch of 50); thinner ones lose (the stem's 3 channels:
# 98 -> 107 ms; mixed_3/tower/conv_2's 96: 15 -> 29 ms).
PATCH_MATMUL_MIN_CHANNELS = 192

# One conv layer: (name, output channels, kernel (h, w), stride, padding (h, w)).
ConvSpec = tuple[str, int, tuple[int, int], int, tuple[int, int]]

# Verified (path, size, mtime) -> True, so a process hashes the 81 MB file only once.
_VERIFIED: set[tuple[str, int, int]] = set()


class WeightsError(ValueError):
    """The weights file is missing or is not the published one. `models` knows nothing of the
    CLI, so `train.metrics.fid.load_fid_weights` turns this into the user-facing error."""


def _spec(name: str, features: int, kernel: int | tuple[int, int], stride: int = 1) -> ConvSpec:
    """A conv spec with the graph's padding: 'same' for stride 1, none for stride 2."""
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    padding = (kh // 2, kw // 2) if stride == 1 else (0, 0)
    return (name, features, (kh, kw), stride, padding)


class ConvBN(nn.Module):
    """conv (no bias) -> batch norm with frozen statistics and no scale -> ReLU.

    `weight` is HWIO; `beta`, `mean` and `var` are the graph's batch-norm arrays. They live in
    `params` (not `batch_stats`) because this network is never trained.
    """

    features: int
    kernel: tuple[int, int]
    stride: int = 1
    padding: tuple[int, int] = (0, 0)
    precision: jax.lax.Precision = jax.lax.Precision.HIGHEST

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        in_features = x.shape[-1]
        weight = self.param(
            "weight",
            nn.initializers.lecun_normal(),
            (*self.kernel, in_features, self.features),
            jnp.float32,
        )
        beta = self.param("beta", nn.initializers.zeros, (self.features,), jnp.float32)
        mean = self.param("mean", nn.initializers.zeros, (self.features,), jnp.float32)
        var = self.param("var", nn.initializers.ones, (self.features,), jnp.float32)
        y = conv2d(x, weight, self.stride, self.padding, self.precision)
        y = (y - mean) * jax.lax.rsqrt(var + BN_EPSILON) + beta
        return jax.nn.relu(y)


def conv2d(
    x: jax.Array,
    weight: jax.Array,
    stride: int,
    padding: tuple[int, int],
    precision: jax.lax.Precision,
) -> jax.Array:
    """NHWC x HWIO convolution, written in the form XLA's CPU backend runs fastest.

    XLA's CPU convolution is fast only for stride 1 with 'same' padding (k // 2). Stride-1
    layers with less padding therefore compute the 'same' output and crop it (bit-identical, 2-3x
    faster), 1x1 layers are a matmul, and strided layers with many input channels gather their
    patches into channels for one matmul (the sums only change order: ~1e-6 relative). See the
    module docstring.
    """
    kh, kw, _, features = weight.shape
    ph, pw = padding
    if stride == 1 and (kh, kw) == (1, 1) and padding == (0, 0):
        return jnp.dot(x, weight[0, 0], precision=precision)
    if stride == 1 and kh % 2 and kw % 2 and ph <= kh // 2 and pw <= kw // 2:
        sh, sw = kh // 2, kw // 2
        y = plain_conv(x, weight, 1, (sh, sw), precision)
        ch, cw = sh - ph, sw - pw
        return y[:, ch : y.shape[1] - ch, cw : y.shape[2] - cw]
    if stride > 1 and padding == (0, 0) and x.shape[-1] >= PATCH_MATMUL_MIN_CHANNELS:
        rows = (x.shape[1] - kh) // stride + 1
        cols = (x.shape[2] - kw) // stride + 1
        patches = [
            x[:, i : i + stride * (rows - 1) + 1 : stride, j : j + stride * (cols - 1) + 1 : stride]
            for i in range(kh)
            for j in range(kw)
        ]  # in HWI order, as the kernel flattens
        kernel = weight.reshape(-1, features)
        return jnp.dot(jnp.concatenate(patches, axis=-1), kernel, precision=precision)
    return plain_conv(x, weight, stride, padding, precision)


def plain_conv(
    x: jax.Array,
    weight: jax.Array,
    stride: int,
    padding: tuple[int, int],
    precision: jax.lax.Precision,
) -> jax.Array:
    """The convolution as XLA takes it: conv2d's fallback, and its baseline in the profile."""
    ph, pw = padding
    return jax.lax.conv_general_dilated(
        x,
        weight,
        window_strides=(stride, stride),
        padding=((ph, ph), (pw, pw)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        precision=precision,
    )


def _conv(spec: ConvSpec, precision: jax.lax.Precision) -> ConvBN:
    name, features, kernel, stride, padding = spec
    return ConvBN(features, kernel, stride, padding, precision, name=name)


def max_pool_3x3(x: jax.Array, stride: int, padding: int = 0) -> jax.Array:
    """3x3 max pool; padded cells never win (they are -inf)."""
    pad = ((0, 0), (padding, padding), (padding, padding), (0, 0))
    return jax.lax.reduce_window(
        x, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, stride, stride, 1), pad
    )


def avg_pool_3x3_exclude_padding(x: jax.Array) -> jax.Array:
    """3x3 stride-1 'same' average pool that divides by the number of real (unpadded) cells,
    as the graph's pooling branches do; border cells average 4 or 6 values, not 9."""
    pad = ((0, 0), (1, 1), (1, 1), (0, 0))
    window, strides = (1, 3, 3, 1), (1, 1, 1, 1)
    total = jax.lax.reduce_window(x, 0.0, jax.lax.add, window, strides, pad)
    ones = jnp.ones((1, *x.shape[1:3], 1), x.dtype)
    count = jax.lax.reduce_window(ones, 0.0, jax.lax.add, window, strides, pad)
    return total / count


class Tower(nn.Module):
    """A chain of convs; with `split`, the chain ends in a `mixed` fork whose two convs (1x3 and
    3x1) both read the chain's output and are concatenated (the mixed_9/10 towers)."""

    convs: Sequence[ConvSpec]
    split: Sequence[ConvSpec] = ()
    precision: jax.lax.Precision = jax.lax.Precision.HIGHEST

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for spec in self.convs:
            x = _conv(spec, self.precision)(x)
        if self.split:
            x = Split(self.split, self.precision, name="mixed")(x)
        return x


class Split(nn.Module):
    """Parallel convs on the same input, concatenated along channels."""

    convs: Sequence[ConvSpec]
    precision: jax.lax.Precision = jax.lax.Precision.HIGHEST

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return jnp.concatenate([_conv(spec, self.precision)(x) for spec in self.convs], axis=-1)


class Block35(nn.Module):
    """mixed, mixed_1, mixed_2 (Mixed_5b-d): 1x1 | 1x1->5x5 | 1x1->3x3->3x3 | avgpool->1x1."""

    pool_features: int
    precision: jax.lax.Precision = jax.lax.Precision.HIGHEST

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        p = self.precision
        branch = _conv(_spec("conv", 64, 1), p)(x)
        tower = Tower([_spec("conv", 48, 1), _spec("conv_1", 64, 5)], precision=p, name="tower")
        tower_1 = Tower(
            [_spec("conv", 64, 1), _spec("conv_1", 96, 3), _spec("conv_2", 96, 3)],
            precision=p,
            name="tower_1",
        )
        tower_2 = Tower([_spec("conv", self.pool_features, 1)], precision=p, name="tower_2")
        branches = [branch, tower(x), tower_1(x), tower_2(avg_pool_3x3_exclude_padding(x))]
        return jnp.concatenate(branches, axis=-1)


class Reduce35(nn.Module):
    """mixed_3 (Mixed_6a): 3x3/2 | 1x1->3x3->3x3/2 | maxpool/2, 35x35 -> 17x17."""

    precision: jax.lax.Precision = jax.lax.Precision.HIGHEST

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        p = self.precision
        branch = _conv(_spec("conv", 384, 3, stride=2), p)(x)
        tower = Tower(
            [_spec("conv", 64, 1), _spec("conv_1", 96, 3), _spec("conv_2", 96, 3, stride=2)],
            precision=p,
            name="tower",
        )
        return jnp.concatenate([branch, tower(x), max_pool_3x3(x, stride=2)], axis=-1)


class Block17(nn.Module):
    """mixed_4..mixed_7 (Mixed_6b-e): factorised 7x7 convs with `width` inner channels."""

    width: int
    precision: jax.lax.Precision = jax.lax.Precision.HIGHEST

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        p, w = self.precision, self.width
        branch = _conv(_spec("conv", 192, 1), p)(x)
        tower = Tower(
            [_spec("conv", w, 1), _spec("conv_1", w, (1, 7)), _spec("conv_2", 192, (7, 1))],
            precision=p,
            name="tower",
        )
        tower_1 = Tower(
            [
                _spec("conv", w, 1),
                _spec("conv_1", w, (7, 1)),
                _spec("conv_2", w, (1, 7)),
                _spec("conv_3", w, (7, 1)),
                _spec("conv_4", 192, (1, 7)),
            ],
            precision=p,
            name="tower_1",
        )
        tower_2 = Tower([_spec("conv", 192, 1)], precision=p, name="tower_2")
        branches = [branch, tower(x), tower_1(x), tower_2(avg_pool_3x3_exclude_padding(x))]
        return jnp.concatenate(branches, axis=-1)


class Reduce17(nn.Module):
    """mixed_8 (Mixed_7a): 1x1->3x3/2 | 1x1->1x7->7x1->3x3/2 | maxpool/2, 17x17 -> 8x8."""

    precision: jax.lax.Precision = jax.lax.Precision.HIGHEST

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        p = self.precision
        tower = Tower(
            [_spec("conv", 192, 1), _spec("conv_1", 320, 3, stride=2)], precision=p, name="tower"
        )
        tower_1 = Tower(
            [
                _spec("conv", 192, 1),
                _spec("conv_1", 192, (1, 7)),
                _spec("conv_2", 192, (7, 1)),
                _spec("conv_3", 192, 3, stride=2),
            ],
            precision=p,
            name="tower_1",
        )
        return jnp.concatenate([tower(x), tower_1(x), max_pool_3x3(x, stride=2)], axis=-1)


class Block8(nn.Module):
    """mixed_9, mixed_10 (Mixed_7b, 7c). `max_pool` reproduces the graph's quirk: mixed_10's
    pooling branch takes a 3x3 max, not an average."""

    max_pool: bool = False
    precision: jax.lax.Precision = jax.lax.Precision.HIGHEST

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        p = self.precision
        split = [_spec("conv", 384, (1, 3)), _spec("conv_1", 384, (3, 1))]
        branch = _conv(_spec("conv", 320, 1), p)(x)
        tower = Tower([_spec("conv", 384, 1)], split, precision=p, name="tower")
        tower_1 = Tower(
            [_spec("conv", 448, 1), _spec("conv_1", 384, 3)], split, precision=p, name="tower_1"
        )
        tower_2 = Tower([_spec("conv", 192, 1)], precision=p, name="tower_2")
        pool = max_pool_3x3(x, 1, 1) if self.max_pool else avg_pool_3x3_exclude_padding(x)
        return jnp.concatenate([branch, tower(x), tower_1(x), tower_2(pool)], axis=-1)


class FIDInceptionV3(nn.Module):
    """(N, 299, 299, 3) float32 in [-1, 1] -> (N, 2048) pool3 features.

    Convs run at HIGHEST precision so that accelerators do not silently drop to TF32/bf16,
    which would shift FID by more than the differences it is used to measure.
    """

    precision: jax.lax.Precision = jax.lax.Precision.HIGHEST

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        p = self.precision
        if x.ndim != 4 or x.shape[1:] != (INPUT_SIZE, INPUT_SIZE, 3):
            raise ValueError(
                f"FIDInceptionV3 input has shape {tuple(x.shape)}; "
                f"expected (N, {INPUT_SIZE}, {INPUT_SIZE}, 3)"
            )
        x = _conv(_spec("conv", 32, 3, stride=2), p)(x)  # 149
        x = _conv(("conv_1", 32, (3, 3), 1, (0, 0)), p)(x)  # 147 (unpadded, unlike _spec)
        x = _conv(_spec("conv_2", 64, 3), p)(x)  # 147
        x = max_pool_3x3(x, stride=2)  # 73
        x = _conv(_spec("conv_3", 80, 1), p)(x)  # 73
        x = _conv(("conv_4", 192, (3, 3), 1, (0, 0)), p)(x)  # 71 (unpadded)
        x = max_pool_3x3(x, stride=2)  # 35
        x = Block35(32, p, name="mixed")(x)  # 256 channels
        x = Block35(64, p, name="mixed_1")(x)  # 288
        x = Block35(64, p, name="mixed_2")(x)  # 288
        x = Reduce35(p, name="mixed_3")(x)  # 17x17x768
        x = Block17(128, p, name="mixed_4")(x)
        x = Block17(160, p, name="mixed_5")(x)
        x = Block17(160, p, name="mixed_6")(x)
        x = Block17(192, p, name="mixed_7")(x)
        x = Reduce17(p, name="mixed_8")(x)  # 8x8x1280
        x = Block8(False, p, name="mixed_9")(x)  # 2048
        x = Block8(True, p, name="mixed_10")(x)  # 2048
        return jnp.mean(x, axis=(1, 2))  # the 8x8 average pool: pool3


def _file_sha256(path: Path, chunk_bytes: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def verify_weights_file(path: Path) -> None:
    """Raise WeightsError unless `path` is exactly the published weights file; a corrupted or
    different file would give plausible-looking but incomparable FIDs."""
    if not path.is_file():
        raise WeightsError(f"FID Inception weights not found: {path} does not exist")
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key in _VERIFIED:
        return
    actual = _file_sha256(path)
    if actual != WEIGHTS_SHA256:
        raise WeightsError(
            f"FID Inception weights {path} have sha256 {actual}; expected {WEIGHTS_SHA256}"
        )
    _VERIFIED.add(key)


def _nest(flat: dict[str, np.ndarray]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for key, value in flat.items():
        *scopes, leaf = key.split("/")
        node = tree
        for scope in scopes:
            node = node.setdefault(scope, {})
        node[leaf] = value
    return tree


def load_fid_weights(folder: str | Path) -> dict[str, Any]:
    """Checksum-verified weights from `folder` as `{"params": tree}` for `FIDInceptionV3.apply`.

    Kernels are transposed from the file's OIHW to HWIO; keys keep the file's layer names.
    """
    folder = Path(os.path.expanduser(str(folder)))
    path = folder / WEIGHTS_FILE
    verify_weights_file(path)
    flat: dict[str, np.ndarray] = {}
    with np.load(path) as npz:
        for key in npz.files:
            array = np.asarray(npz[key], dtype=np.float32)
            if key.endswith("/weight"):
                array = np.ascontiguousarray(array.transpose(2, 3, 1, 0))
            flat[key] = array
    return {"params": _nest(flat)}
