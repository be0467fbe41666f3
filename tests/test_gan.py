"""The GAN family: losses, models, spectral norm, one-state training, learning, resume, sharding,
pictures, FID wiring and errors."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import (
    GAN_CONFIG,
    REPO,
    assert_checkpoints_equal,
    assert_sample_grid,
    gan_config,
    genlab,
)
from test_fid_eval import ProjectionFeatures

from launch.config import load_config
from models.gan import SPECTRAL, Discriminator, Generator, depth_to_space
from train.data.splits import NONE
from train.errors import UserError
from train.logging import read_metrics
from train.metrics import fid
from train.metrics.generated import generated_image_scores
from train.state import ema_decay
from train.tasks import build_task
from train.tasks.gan import build_models, discriminator_loss, generator_loss
from train.trainer import restore_run, train

ONE_DEVICE = {"mesh.data": "1"}


def test_losses_at_known_logits():
    real, fake = jnp.asarray([0.0, 2.0]), jnp.asarray([0.0, -2.0])
    nonsat = discriminator_loss("nonsaturating", real, fake)
    np.testing.assert_allclose(nonsat[0], 2 * np.log(2), rtol=1e-6)  # D undecided
    np.testing.assert_allclose(nonsat[1], 2 * np.log1p(np.exp(-2.0)), rtol=1e-6)
    np.testing.assert_allclose(discriminator_loss("hinge", real, fake), [2.0, 0.0])  # margin met
    np.testing.assert_allclose(discriminator_loss("wgan", real, fake), [0.0, -4.0])
    np.testing.assert_allclose(
        generator_loss("nonsaturating", fake), np.log1p(np.exp(-fake)), rtol=1e-6
    )
    np.testing.assert_allclose(generator_loss("hinge", fake), -fake)
    with pytest.raises(UserError, match="allowed: nonsaturating, hinge, wgan"):
        discriminator_loss("lsgan", real, fake)


@pytest.mark.parametrize(
    ("shape", "upsample", "spectral", "classes"),
    [((28, 28, 1), "transposed", False, 0), ((32, 32, 3), "subpixel", True, 10)],
)
def test_models_map_noise_to_images_and_images_to_logits(shape, upsample, spectral, classes):
    generator = Generator(shape, width=8, num_classes=classes, upsample=upsample)
    norm = "spectral" if spectral else "batch"
    discriminator = Discriminator(width=8, norm=norm, num_classes=classes)
    z, labels = jax.random.normal(jax.random.key(0), (4, 16)), jnp.arange(4)
    given = labels if classes else None
    # jit: op-by-op dispatch of these models (spectral norm included) is slow on 2 cores
    g_vars = jax.jit(generator.init)(jax.random.key(1), z, given)
    g_apply = jax.jit(lambda v, z, y: generator.apply(v, z, y, mutable=["batch_stats"]))
    images, _ = g_apply(g_vars, z, given)
    assert images.shape == (4, *shape) and float(jnp.abs(images).max()) <= 1.0
    d_vars = jax.jit(discriminator.init)(jax.random.key(2), images, given)
    d_apply = jax.jit(lambda v, x, y: discriminator.apply(v, x, y, mutable=["batch_stats"]))
    logits, _ = d_apply(d_vars, images, given)
    assert logits.shape == (4,) and np.isfinite(logits).all()
    assert (SPECTRAL in d_vars) == spectral
    boxes = jax.tree.leaves(g_vars["params"], is_leaf=lambda x: isinstance(x, nn.Partitioned))
    assert all(isinstance(b, nn.Partitioned) for b in boxes)  # G shards by logical axis names
    if classes:  # the label changes the projection discriminator's verdict
        other, _ = d_apply(d_vars, images, (labels + 1) % classes)
        assert not np.allclose(logits, other)


def test_depth_to_space_moves_channel_groups_to_pixel_offsets():
    x = jnp.arange(2 * 3 * 3 * 8).reshape(2, 3, 3, 8)
    y = depth_to_space(x)
    assert y.shape == (2, 6, 6, 2)
    for dy in range(2):
        for dx in range(2):  # channel group (dy, dx) lands at pixel offset (dy, dx)
            group = x[..., (2 * dy + dx) * 2 : (2 * dy + dx + 1) * 2]
            np.testing.assert_array_equal(y[:, dy::2, dx::2], group)


def test_spectral_norm_power_iteration_finds_the_largest_singular_value():
    model = Discriminator(width=4, norm="spectral")
    images = jax.random.normal(jax.random.key(0), (2, 28, 28, 1))
    variables = model.init(jax.random.key(1), images)
    for _ in range(30):
        _, updated = model.apply(variables, images, update_stats=True, mutable=[SPECTRAL])
        variables = {**variables, **updated}
    kernel = variables["params"]["conv_1a"]["kernel"]
    sigma = variables[SPECTRAL]["SpectralNorm_2"]["conv_1a/kernel/sigma"]
    largest = np.linalg.svd(np.asarray(kernel).reshape(-1, kernel.shape[-1]), compute_uv=False)[0]
    np.testing.assert_allclose(sigma, largest, rtol=1e-3)


def test_ema_decay_ramps_up_to_its_limit():
    assert float(ema_decay(0.999, jnp.asarray(0))) == pytest.approx(0.1)
    assert float(ema_decay(0.999, jnp.asarray(10**6))) == pytest.approx(0.999)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The test GAN after 200 steps at batch 32, and its workdir."""
    workdir = tmp_path_factory.mktemp("gan")
    config = gan_config(
        **{"train.steps": "200", "train.batch_size": "32", "train.eval_every": "100", **ONE_DEVICE}
    )
    train(config, workdir, devices=jax.devices()[:1])
    return config, workdir


def _frechet_to_test_images(task, params, dims: int = 16) -> float:
    """Fréchet distance between 512 samples and 512 test images in a fixed random projection of
    the pixels: a cheap stand-in for FID, to see that the generator learns."""
    projection = np.random.default_rng(0).normal(size=(784, dims))
    fake = task._draw(params, jax.random.key(5), 512).reshape(512, -1) @ projection
    real = task.reference_images("test")[:512].reshape(512, -1) @ projection
    return fid.frechet_distance(
        fake.mean(0), np.cov(fake, rowvar=False), real.mean(0), np.cov(real, rowvar=False)
    )


def test_generator_learns_and_the_step_updates_everything(trained):
    config, workdir = trained
    task, state, _, step = restore_run(config, workdir, devices=jax.devices()[:1])
    untrained = jax.jit(lambda r: nn.meta.unbox(task.init_state(r)))(jax.random.key(0))
    assert step == 200
    assert int(state.discriminator.step) == 200 * config.loss.n_critic
    before = _frechet_to_test_images(task, untrained.ema_params)
    after = _frechet_to_test_images(task, state.ema_params)
    assert after < 0.5 * before, (before, after)
    ema, live = jax.tree.leaves(state.ema_params), jax.tree.leaves(state.generator.params)
    assert not all(np.array_equal(a, b) for a, b in zip(ema, live, strict=True))
    records = read_metrics(workdir)
    assert all(np.isfinite(r["train/d_loss"]) for r in records if "train/d_loss" in r)
    evals = [r for r in records if "eval/d_accuracy" in r]
    assert evals and 0.0 <= evals[-1]["eval/d_accuracy"] <= 1.0
    grids = sorted((workdir / "samples").glob("samples_*.png"))
    assert [g.name for g in grids] == ["samples_0000100.png", "samples_0000200.png"]


@pytest.mark.parametrize(
    "overrides",
    [
        {"loss.name": "hinge", "model.d_norm": "spectral", "model.num_classes": "10"},
        {"loss.name": "wgan", "loss.gp_weight": "10", "loss.n_critic": "2", "model.d_norm": "none"},
        {"loss.r1_gamma": "1", "model.upsample": "subpixel", "model.d_norm": "spectral"},
    ],
)
def test_loss_variants_train_with_finite_penalties(tmp_path, overrides):
    config = gan_config(**{"train.steps": "4", "train.eval_every": "4", **ONE_DEVICE, **overrides})
    metrics = train(config, tmp_path, devices=jax.devices()[:1])
    assert np.isfinite(metrics["train/loss"])
    for penalty in ("train/gp", "train/r1"):
        if penalty in metrics:
            assert metrics[penalty] > 0
    if config.model.num_classes:  # one column per class in the fixed-noise grid
        assert (tmp_path / "samples" / "samples_0000004.png").is_file()


def test_resume_is_exact(tmp_path):
    overrides = {"loss.n_critic": "2", **ONE_DEVICE}
    train(gan_config(**overrides), tmp_path / "straight", devices=jax.devices()[:1])
    train(
        gan_config(**overrides, **{"train.steps": "10"}),
        tmp_path / "resumed",
        devices=jax.devices()[:1],
    )
    train(gan_config(**overrides), tmp_path / "resumed", devices=jax.devices()[:1])
    assert_checkpoints_equal(tmp_path / "straight", tmp_path / "resumed", 20)


def test_data_parallel_step_equals_one_device(tmp_path):
    """Eight-way data parallelism (generator batch norm over the global batch) matches one
    device."""
    overrides = {"train.steps": "3", "train.eval_every": "100", "train.checkpoint_every": "100"}
    one = train(gan_config(**overrides, **ONE_DEVICE), tmp_path / "one", devices=jax.devices()[:1])
    eight = train(gan_config(**overrides, **{"mesh.data": "-1"}), tmp_path / "eight")
    for key in ("train/d_loss", "train/g_loss", "train/d_real", "train/d_fake"):
        np.testing.assert_allclose(eight[key], one[key], rtol=1e-4, atol=1e-5)


def test_fid_of_gan_samples_uses_the_ema_generator(trained):
    config, workdir = trained
    task, state, _, _ = restore_run(config, workdir, devices=jax.devices()[:1])
    features = ProjectionFeatures()
    scores = generated_image_scores(task, state, 300, features, workdir / "cache")
    assert scores["fid/num_samples"] == 300 and scores["eval/fid"] > 0
    shuffled = state.replace(ema_params=state.generator.params)  # the live weights differ
    other = generated_image_scores(task, shuffled, 300, features, workdir / "cache")
    assert other["eval/fid"] != scores["eval/fid"]


def test_in_training_fid_is_logged_when_asked(tmp_path, monkeypatch):
    from train.metrics import generated

    monkeypatch.setattr(generated.fid, "FeatureExtractor", lambda weights: ProjectionFeatures())
    monkeypatch.setattr(generated, "DEFAULT_CACHE", tmp_path / "fid_cache")
    config = gan_config(
        **{
            "train.steps": "2",
            "train.eval_every": "2",
            "evals.fid.every": "0",
            "evals.fid.num_samples": "300",
            **ONE_DEVICE,
        }
    )
    metrics = train(config, tmp_path, devices=jax.devices()[:1])
    assert metrics["eval/fid"] > 0 and "eval/kid" in metrics


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("--config.loss.name=lsgan", "loss.name='lsgan' is unknown; allowed: nonsaturating"),
        ("--config.loss.n_critic=0", "loss.n_critic=0: must be at least 1"),
        ("--config.model.upsample=bicubic", "model.upsample='bicubic' is unknown"),
        ("--config.model.num_classes=5", "model.num_classes=5 but mnist has labels up to 9"),
        ("--config.data.name=svhn", "data.name='svhn' is unknown"),
        ("--config.model.d_norm=layer", "model.d_norm='layer' is unknown"),
        (
            "--config.loss.r1_gamma=1 --config.model.d_norm=batch",
            "need per-example discriminator outputs",
        ),
    ],
)
def test_bad_gan_settings_are_one_line_errors(tmp_path, override, message):
    result = genlab(
        "train",
        "--config",
        f"{GAN_CONFIG}:test",
        "--workdir",
        str(tmp_path),
        f"--config.data.path={gan_config().data.path}",
        *override.split(),
    )
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_unsupported_image_size_is_refused():
    config = gan_config()
    assert build_task(config, splits=NONE).image_shape == (28, 28, 1)
    with pytest.raises(UserError, match="support 28x28 and 32x32"):
        build_models(config.model, (64, 64, 3))


def test_cifar10_config_is_the_sngan_standard_cnn():
    config = load_config(f"{REPO}/experiments/gan_cifar10.py:sngan")
    task = build_task(config, splits=NONE)
    shapes = jax.eval_shape(lambda r: nn.meta.unbox(task.init_state(r)), jax.random.key(0))
    assert task.image_shape == (32, 32, 3) and config.data.random_flip
    g = shapes.generator.params
    assert g["project"]["kernel"].shape == (128, 4 * 4 * 512)
    assert [g[f"up_{i}"]["conv"]["kernel"].shape[-1] for i in range(3)] == [256, 128, 64]
    assert shapes.discriminator.params["conv_out"]["kernel"].shape[-1] == 512


def test_genlab_sample_writes_a_picture_grid(trained, tmp_path):
    workdir = trained[1]
    assert_sample_grid(workdir, tmp_path / "grid.png")
