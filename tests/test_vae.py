"""The VAE family: KL, bounds, image data, training, resume, pictures, anomaly scores, errors."""

from __future__ import annotations

import gzip
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import (
    DATA,
    VAE_CONFIG,
    assert_checkpoints_equal,
    assert_sample_grid,
    genlab,
    vae_config,
)

from models.vae import VAE, gaussian_log_prob, kl_to_standard_normal
from train.data import images as image_data
from train.errors import UserError
from train.logging import read_metrics
from train.tasks.vae import importance_weighted_nll, log_mean_exp
from train.trainer import restore_run, train

ONE_DEVICE = {"mesh.data": "1"}


def test_closed_form_kl_matches_monte_carlo():
    rng = np.random.default_rng(0)
    mean, logvar = rng.normal(size=(3, 5)), rng.normal(size=(3, 5)) * 0.5
    z = mean + np.exp(0.5 * logvar) * rng.normal(size=(200_000, 3, 5))
    monte_carlo = np.mean(
        gaussian_log_prob(z, mean, logvar) - gaussian_log_prob(z, 0.0, 0 * z), axis=0
    )
    np.testing.assert_allclose(monte_carlo, kl_to_standard_normal(mean, logvar), rtol=0.02)


@pytest.fixture(scope="module")
def briefly_trained(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("vae")
    config = vae_config(**{"train.steps": "200", "optim.lr": "3e-3", **ONE_DEVICE})
    train(config, workdir, devices=jax.devices()[:1])
    task, state, _, _ = restore_run(config, workdir, devices=jax.devices()[:1])
    return task, state.params, workdir


def test_iwae_with_one_sample_is_the_elbo_and_grows_with_k(briefly_trained):
    task, params, _ = briefly_trained
    x = jnp.asarray(task._prepare(task.data.eval_images[:100], 0, 0))
    rng = jax.random.key(1)
    terms = task.model.apply({"params": params}, x, rng, 1)
    elbo_same_sample = terms["log_px_z"][0] + terms["log_pz"][0] - terms["log_qz"][0]
    log_w = terms["log_px_z"] + terms["log_pz"] - terms["log_qz"]
    np.testing.assert_allclose(log_mean_exp(log_w, 0), elbo_same_sample, rtol=1e-6)
    bounds = [
        -importance_weighted_nll(task.model, params, x, rng, k, k).mean() for k in (1, 10, 100)
    ]
    assert bounds[0] < bounds[1] < bounds[2], bounds


def test_two_stochastic_layers_and_conv_and_logistic_variants_run():
    x_bin = (jax.random.uniform(jax.random.key(0), (4, 28, 28, 1)) > 0.5).astype(jnp.float32)
    for model, x in [
        (VAE(latents=(10, 5), hiddens=(20, 10)), x_bin),
        (VAE(arch="conv", conv_width=8), x_bin),
        (VAE(likelihood="logistic"), x_bin * 2 - 1),
    ]:
        # jit: op-by-op dispatch of these three models costs half a minute on 2 cores
        params = jax.jit(model.init)(jax.random.key(1), x, jax.random.key(2))["params"]
        apply = jax.jit(model.apply, static_argnums=3)
        terms = apply({"params": params}, x, jax.random.key(3), 3)
        assert terms["log_px_z"].shape == terms["log_pz"].shape == (3, 4)
        assert np.isfinite(terms["log_px_z"]).all() and (terms["log_px_z"] < 0).all()


def test_loss_falls_and_pictures_are_written(briefly_trained):
    _, _, workdir = briefly_trained
    losses = [r["train/loss"] for r in read_metrics(workdir) if "train/loss" in r]
    assert losses[-1] < 0.6 * losses[0]
    evals = [r for r in read_metrics(workdir) if "eval/nll" in r]
    assert evals[-1]["eval/nll"] <= evals[-1]["eval/elbo"] * -1 + 1e-3  # NLL bound <= -ELBO
    assert np.isclose(evals[-1]["eval/bpd"], evals[-1]["eval/nll"] / (784 * np.log(2)))
    for kind in ("samples", "reconstructions", "interpolations"):
        pictures = sorted((workdir / "samples").glob(f"{kind}_*.png"))
        assert pictures and pictures[-1].read_bytes()[:4] == b"\x89PNG"


def test_resume_is_exact(tmp_path):
    straight = vae_config(**ONE_DEVICE)
    train(straight, tmp_path / "straight", devices=jax.devices()[:1])
    first = vae_config(**{"train.steps": "15", **ONE_DEVICE})
    train(first, tmp_path / "resumed", devices=jax.devices()[:1])
    train(vae_config(**ONE_DEVICE), tmp_path / "resumed", devices=jax.devices()[:1])

    assert_checkpoints_equal(tmp_path / "straight", tmp_path / "resumed", 30)


def test_batches_are_epoch_permutations_and_binarization_is_keyed():
    stream = image_data.ImageStream(np.arange(10)[:, None, None, None], np.arange(10))
    first_epoch = np.concatenate([stream.indices(0, step, 5) for step in (0, 1)])
    assert sorted(first_epoch) == list(range(10))
    np.testing.assert_array_equal(stream.indices(0, 3, 5), stream.indices(0, 3, 5))
    halves = [stream.indices(0, 3, 4, process_index=i, process_count=2) for i in range(2)]
    np.testing.assert_array_equal(np.concatenate(halves), stream.indices(0, 3, 4))
    grey = np.full((2, 28, 28, 1), 0.3, np.float32)
    a, b = image_data.binarize(grey, 0, 5), image_data.binarize(grey, 0, 6)
    np.testing.assert_array_equal(a, image_data.binarize(grey, 0, 5))
    assert not np.array_equal(a, b) and abs(a.mean() - 0.3) < 0.05


def test_static_binarized_mnist_and_fashion_load():
    images, labels = image_data.load_split("binarized_mnist", str(DATA / "binarized_mnist"), "test")
    assert images.shape == (10_000, 28, 28, 1) and set(np.unique(images)) == {0, 255}
    assert (labels == -1).all()
    images, labels = image_data.load_split("fashion_mnist", str(DATA / "fashion_mnist"), "test")
    assert images.shape == (10_000, 28, 28, 1) and np.bincount(labels).tolist() == [1000] * 10


def test_holdout_class_gives_auroc_and_eval_writes_scores(tmp_path):
    config = vae_config(
        **{
            "data.holdout_class": "1",
            "train.steps": "60",
            **ONE_DEVICE,
            "data.eval_examples": "300",
            "train.eval_every": "60",
        }
    )
    metrics = train(config, tmp_path, devices=jax.devices()[:1])
    assert 0.0 <= metrics["eval/auroc"] <= 1.0
    scores = tmp_path / "scores.npz"
    result = genlab(
        "eval",
        "--workdir",
        str(tmp_path),
        "--scores",
        str(scores),
        "--config.eval.iwae_samples=8",
        "--config.mesh.data=-1",
        "--config.train.eval_batch_size=40",
        check=True,
    )
    assert json.loads(result.stdout.strip().splitlines()[-1])["eval/iwae_samples"] == 8.0
    saved = np.load(scores)
    assert saved["nll"].shape == saved["label"].shape == (300,) and (saved["nll"] > 0).all()


def test_bad_data_errors_are_one_line(tmp_path):
    result = genlab(
        "train",
        "--config",
        f"{VAE_CONFIG}:test",
        "--workdir",
        str(tmp_path / "w"),
        f"--config.data.path={tmp_path / 'nowhere'}",
    )
    assert result.returncode == 2 and "no such folder" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    wrong = tmp_path / "wrong"  # IDX files holding 32x32 images
    wrong.mkdir()
    header = np.array([2051, 5, 32, 32], ">u4").tobytes()
    with gzip.open(wrong / "train-images-idx3-ubyte.gz", "wb") as f:
        f.write(header + bytes(5 * 32 * 32))
    with gzip.open(wrong / "train-labels-idx1-ubyte.gz", "wb") as f:
        f.write(np.array([2049, 5], ">u4").tobytes() + bytes(5))
    with pytest.raises(UserError, match=r"1024 pixels per image, expected 784"):
        image_data.load_split("mnist", str(wrong), "train")
    result = genlab(
        "train",
        "--config",
        f"{VAE_CONFIG}:test",
        "--workdir",
        str(tmp_path / "w2"),
        f"--config.data.path={wrong}",
    )
    assert result.returncode == 2 and "expected 784" in result.stderr


def test_genlab_sample_writes_a_picture_grid(briefly_trained, tmp_path):
    workdir = briefly_trained[2]
    assert_sample_grid(workdir, tmp_path / "grid.png")
