"""Shared test set-up: eight virtual CPU devices, the local data, tiny configs, CLI runners."""

from __future__ import annotations

import importlib.util
import os

# Must precede the first import of jax anywhere in the test session.
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
if importlib.util.find_spec("libtpu") is not None:  # .[plan]: compile for TPUs, never run on one
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Many tests (and their subprocesses) compile the same tiny programs: they share a compilation
# cache, private to this test session so that concurrent sessions never read each other's
# half-written entries.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    import atexit
    import shutil
    import tempfile

    _cache = tempfile.mkdtemp(prefix="genlab-test-jax-cache-")
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
SHAKESPEARE = DATA / "tinyshakespeare" / "input.txt"
LM_CONFIG = REPO / "experiments" / "shakespeare_char.py"
VAE_CONFIG = REPO / "experiments" / "vae_mnist.py"
GAN_CONFIG = REPO / "experiments" / "gan_mnist.py"
DIFFUSION_CONFIG = REPO / "experiments" / "diffusion_mnist.py"
SEQ2SEQ_CONFIG = REPO / "experiments" / "translate_multi30k.py"
MULTI30K = DATA / "multi30k"


def _test_variant(config_file: Path, data: Path, overrides: dict[str, str]):
    """The `test` variant of an experiment file on local data, with dotted-key overrides."""
    from launch.config import apply_overrides, load_config

    config = load_config(f"{config_file}:test")
    apply_overrides(config, {"data.path": str(data), **overrides})
    return config


def lm_config(**overrides: str):
    """The Shakespeare LM's `test` variant on the local file."""
    return _test_variant(LM_CONFIG, SHAKESPEARE, overrides)


def vae_config(**overrides: str):
    """The MNIST VAE's `test` variant on the local files."""
    return _test_variant(VAE_CONFIG, DATA / "mnist", overrides)


def gan_config(**overrides: str):
    """The MNIST GAN's `test` variant on the local files."""
    return _test_variant(GAN_CONFIG, DATA / "mnist", overrides)


def diffusion_config(**overrides: str):
    """The MNIST diffusion model's `test` variant on the local files."""
    return _test_variant(DIFFUSION_CONFIG, DATA / "mnist", overrides)


def lm_variant_config(variant: str, **overrides: str):
    """Another variant of the Shakespeare LM file (e.g. `ssm_test`), on one device."""
    from launch.config import apply_overrides, load_config

    config = load_config(f"{LM_CONFIG}:{variant}")
    apply_overrides(config, {"data.path": str(SHAKESPEARE), "mesh.data": "1", **overrides})
    return config


def seq2seq_config(**overrides: str):
    """The Multi30k translation `test` variant on the local files, on one device."""
    return _test_variant(SEQ2SEQ_CONFIG, MULTI30K, {"mesh.data": "1", **overrides})


def assert_checkpoints_equal(dir_a: Path, dir_b: Path, step: int) -> None:
    """The train states two workdirs saved at `step` are bit for bit the same."""
    import numpy as np
    import orbax.checkpoint as ocp
    from jax import tree

    a, b = (
        ocp.StandardCheckpointer().restore(Path(d) / "checkpoints" / str(step) / "state")
        for d in (dir_a, dir_b)
    )
    leaves = list(zip(tree.leaves(a), tree.leaves(b), strict=True))
    assert len(leaves) > 10
    for x, y in leaves:
        assert np.array_equal(np.asarray(x), np.asarray(y))


def tiny_decoder_lm(**overrides):
    """A two-layer, 16-wide decoder LM over 13 tokens (context 16) for model-level tests."""
    from models.transformer import DecoderLM

    settings = dict(vocab_size=13, num_layers=2, num_heads=2, emb_dim=16, mlp_dim=32, max_len=16)
    return DecoderLM(**{**settings, **overrides})


def run_in_pieces(model, params, inputs, cuts: list[int]):
    """The outputs of feeding `inputs` to a recurrent model in decode mode, split along time at
    `cuts` (each piece continues the state the previous one left in the cache)."""
    import jax
    import jax.numpy as jnp

    shapes = jax.eval_shape(lambda: model.init(jax.random.key(1), inputs[:, :1], decode=True))
    state = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes["cache"])

    @jax.jit
    def step(state, x):
        return model.apply({"params": params, "cache": state}, x, decode=True, mutable=["cache"])

    pieces = []
    for start, stop in zip([0, *cuts], [*cuts, inputs.shape[1]], strict=True):
        out, mutated = step(state, inputs[:, start:stop])
        state = mutated["cache"]
        pieces.append(out)
    return jnp.concatenate(pieces, axis=1)


def assert_close(actual, expected) -> None:
    """Equal to 1e-5 of the outputs' size (which the small init keeps far below 1)."""
    import numpy as np

    scale = float(np.abs(np.asarray(expected)).max())
    np.testing.assert_allclose(
        np.asarray(actual) / scale, np.asarray(expected) / scale, atol=1e-5, rtol=0
    )


def genlab(
    *args: str, timeout: float = 900, env: dict | None = None, check: bool = False
) -> subprocess.CompletedProcess:
    """Run the `genlab` command in a fresh process (the way users run it). The timeout only
    catches hangs: a loaded 2-core machine can be many times slower than an idle one."""
    result = subprocess.run(
        [sys.executable, "-m", "launch.cli", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )
    if check and result.returncode != 0:
        raise AssertionError(f"genlab {' '.join(args)} failed:\n{result.stderr[-3000:]}")
    return result


def train_args(workdir: Path, *overrides: str, variant: str = "test") -> list[str]:
    return [
        "train",
        "--config",
        f"{LM_CONFIG}:{variant}",
        "--workdir",
        str(workdir),
        f"--config.data.path={SHAKESPEARE}",
        *overrides,
    ]


@pytest.fixture(scope="session")
def trained_lm(tmp_path_factory) -> Path:
    """A workdir with a briefly trained test LM, shared by the eval/sample tests."""
    workdir = tmp_path_factory.mktemp("trained_lm")
    genlab(*train_args(workdir), check=True)
    return workdir


def assert_sample_grid(workdir: Path, out: Path, image_size: int = 28) -> None:
    """`genlab sample` on an image family's run writes its PNG grid: 6 images, 3 per row, each
    pixel doubled, 2-pixel gaps (train/pictures.py), and prints the path."""
    result = genlab(
        "sample", "--workdir", str(workdir), "--num_images", "6", "--columns", "3",
        "--out", str(out), check=True,
    )  # fmt: skip
    assert result.stdout.strip() == str(out)
    from PIL import Image

    cell = image_size + 2
    with Image.open(out) as picture:
        assert picture.size == ((3 * cell + 2) * 2, (2 * cell + 2) * 2)
