"""`genlab eval --metric fid` wiring: model samples and reference images through the FID code.

Inception-v3 takes ~0.1-0.2 s per image on 2 CPU cores, too slow for the 2,049+ images a
full-rank 2048-d covariance needs, so a fixed random projection to 64 dimensions stands in for it
here (full rank from 65 images); the network itself is checked in test_fid.py.
"""

from __future__ import annotations

import jax
import numpy as np
from conftest import VAE_CONFIG, genlab, vae_config

from train.metrics import fid
from train.metrics.generated import generated_image_scores
from train.trainer import restore_run, train


class ProjectionFeatures:
    """Features by a fixed random projection of the pixels (stand-in for Inception)."""

    fingerprint = "random-projection"  # never mistaken for Inception features in a cache

    def __init__(self, pixels: int = 784, feature_dim: int = 64):
        self.feature_dim = feature_dim
        self.weights = np.random.default_rng(0).normal(size=(pixels, feature_dim)) / 28

    def batches(self, images):
        for chunk in [images] if isinstance(images, np.ndarray) else images:
            chunk = np.asarray(chunk, np.float64)
            fid.check_images(chunk)
            yield chunk.reshape(len(chunk), -1) @ self.weights

    def __call__(self, images):
        return np.concatenate(list(self.batches(images)))


def test_fid_of_vae_samples_and_of_real_images(tmp_path):
    config = vae_config(**{"mesh.data": "1", "train.steps": "30"})
    train(config, tmp_path / "run", devices=jax.devices()[:1])
    task, state, _, _ = restore_run(config, tmp_path / "run", devices=jax.devices()[:1])
    features = ProjectionFeatures()

    scores = generated_image_scores(task, state, 300, features, tmp_path / "cache")
    assert scores["eval/fid"] > 1.0 and scores["fid/num_samples"] == 300
    assert "mnist/test" in scores["fid/reference"] and "bilinear" in scores["fid/resize"]
    assert list((tmp_path / "cache").glob("fid-mnist-test-300-random-projection.npz"))
    assert list((tmp_path / "cache").glob("fid-mnist-test-kid-features-300-*.npz"))

    task.sample_images = lambda state, count, seed: iter([task.reference_images("test")[:count]])
    perfect = generated_image_scores(task, state, 300, features, tmp_path / "cache")
    assert abs(perfect["eval/fid"]) < 1e-3 and perfect["eval/fid"] < scores["eval/fid"]


def test_fid_cli_needs_enough_samples_and_an_image_family(tmp_path, trained_lm):
    run = tmp_path / "vae"
    genlab(
        "train",
        "--config",
        f"{VAE_CONFIG}:test",
        "--workdir",
        str(run),
        f"--config.data.path={vae_config().data.path}",
        "--config.train.batch_size=16",
        "--config.train.eval_batch_size=40",
        check=True,
    )
    result = genlab("eval", "--workdir", str(run), "--metric", "fid", "--num_samples", "100")
    assert result.returncode == 2 and "too few samples" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    result = genlab("eval", "--workdir", str(trained_lm), "--metric", "fid")
    assert result.returncode == 2 and "task 'lm' is not an image sampler" in result.stderr
    assert "it is a text sampler, a sample writer" in result.stderr
