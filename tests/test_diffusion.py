"""The diffusion family: the forward process, the bound, the samplers, both denoisers, learning,
exact resume, sharded sampling, pictures, FID wiring and errors."""

from __future__ import annotations

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from conftest import (
    DATA,
    DIFFUSION_CONFIG,
    REPO,
    assert_checkpoints_equal,
    assert_sample_grid,
    diffusion_config,
    genlab,
)
from test_fid_eval import ProjectionFeatures

from launch.config import load_config
from models.dit import patchify, unpatchify
from train import partitioning
from train.data.splits import NONE
from train.errors import UserError
from train.logging import read_metrics
from train.metrics.generated import generated_image_scores
from train.tasks import build_task
from train.tasks.diffusion import schedule as diffusion
from train.trainer import place_state, restore_run, train

ONE_DEVICE = {"mesh.data": "1"}
ONE_MESH = ml_collections.ConfigDict({"data": 1, "fsdp": 1, "tensor": 1})


def _schedule(kind: str = "linear", steps: int = 50) -> diffusion.Schedule:
    return diffusion.Schedule(diffusion.beta_schedule(kind, steps, 1e-4, 0.02))


def test_closed_form_q_sample_matches_iterating_the_forward_process():
    """q(x_t | x_0) in one jump has the mean and variance of t + 1 single noising steps."""
    schedule, draws = _schedule(steps=50), 40_000
    x0 = jnp.broadcast_to(jnp.asarray([-1.0, 0.0, 0.5, 1.0]), (draws, 4))
    t = 29
    x = x0
    for step in range(t + 1):
        noise = jax.random.normal(jax.random.fold_in(jax.random.key(0), step), x.shape)
        x = schedule.q_step(x, jnp.full((draws,), step), noise)
    jump = schedule.q_sample(
        x0, jnp.full((draws,), t), jax.random.normal(jax.random.key(1), x.shape)
    )
    a = schedule.alpha_bar[t]
    for samples in (x, jump):
        mean, var = np.asarray(samples.mean(0)), np.asarray(samples.var(0))
        np.testing.assert_allclose(mean, np.sqrt(a) * np.asarray(x0[0]), atol=0.02)
        np.testing.assert_allclose(var, 1.0 - a, rtol=0.03)


def test_schedules_and_v_prediction_round_trip():
    linear, cosine = _schedule("linear", 1000), _schedule("cosine", 1000)
    for schedule in (linear, cosine):
        assert np.all(np.diff(schedule.alpha_bar) < 0) and schedule.betas.max() <= 0.999
        assert schedule.alpha_bar[-1] < 1e-4  # x_T is nearly pure noise
    x0 = jax.random.uniform(jax.random.key(0), (3, 4, 4, 1), minval=-1, maxval=1)
    noise = jax.random.normal(jax.random.key(1), x0.shape)
    t = jnp.asarray([0, 500, 999])
    xt = cosine.q_sample(x0, t, noise)
    for kind in diffusion.PREDICTIONS:  # a perfect prediction gives back the noise and x_0
        out = cosine.target(kind, x0, t, noise)
        eps, x0_hat = cosine.split_prediction(kind, xt, t, out, clip=False)
        np.testing.assert_allclose(eps, noise, atol=2e-3)
        np.testing.assert_allclose(x0_hat, x0, atol=2e-3)


def test_discretized_decoder_is_a_distribution_over_256_levels():
    levels = jnp.linspace(-1.0, 1.0, 256)
    for mean, log_scale in ((0.0, -1.0), (0.9, -4.0), (-0.3, -6.0), (0.2, 1.0)):
        log_p = diffusion.discretized_gaussian_log_likelihood(
            levels, jnp.full(256, mean), jnp.full(256, log_scale)
        )
        assert np.isfinite(log_p).all()
        np.testing.assert_allclose(float(jnp.exp(log_p).sum()), 1.0, atol=1e-4)


def _point_mass_predictor(value: float):
    """The optimal denoiser when every image is the constant `value`: x_0 is known exactly."""

    def predict(xt, t):
        x0 = jnp.full_like(xt, value)
        a = jnp.asarray(_schedule().alpha_bar, jnp.float32)[t][:, None, None, None]
        return (xt - jnp.sqrt(a) * x0) / jnp.sqrt(1 - a), x0

    return predict


def test_bound_of_the_perfect_denoiser_is_prior_plus_decoder():
    """With x_0 predicted exactly and the posterior's own variance, every KL term vanishes."""
    schedule, value = _schedule(), 0.2
    x0 = jnp.full((4, 3, 3, 1), value)
    bound = diffusion.variational_bound(
        schedule, _point_mass_predictor(value), x0, jax.random.key(0), 49, "small"
    )
    np.testing.assert_allclose(bound["nll"], bound["prior"] + bound["decoder"], rtol=1e-5)
    stratified = diffusion.variational_bound(
        schedule, _point_mass_predictor(-0.5), x0, jax.random.key(1), 49, "small"
    )
    assert np.all(stratified["nll"] > bound["nll"] + 1.0)  # a wrong denoiser pays in KL


def test_stratified_bound_is_unbiased_for_the_exact_one():
    schedule = _schedule()
    x0 = jnp.full((2, 2, 2, 1), 0.6)
    predict = _point_mass_predictor(0.0)  # wrong on purpose: the KL terms are large
    exact = diffusion.variational_bound(schedule, predict, x0, jax.random.key(0), 49, "large")
    draw = lambda key: diffusion.variational_bound(schedule, predict, x0, key, 5, "large")["nll"]
    draws = jax.jit(jax.vmap(draw))(jax.random.split(jax.random.key(1), 200))
    np.testing.assert_allclose(np.mean(draws), np.mean(exact["nll"]), rtol=0.02)


@pytest.mark.parametrize("sampler", diffusion.SAMPLERS)
def test_samplers_recover_a_point_mass(sampler):
    value = 0.25
    noise = jax.random.normal(jax.random.key(0), (3, 2, 2, 1))
    images, path = diffusion.sample(
        _schedule(), _point_mass_predictor(value), noise, jax.random.key(1), sampler, 10, 0.0,
        "large", frames=4,
    )  # fmt: skip
    np.testing.assert_allclose(images, value, atol=1e-4)
    assert path.shape == (4, 3, 2, 2, 1)
    np.testing.assert_array_equal(path[0], noise)  # x_T first, x_0 last
    np.testing.assert_array_equal(path[-1], images)
    assert not np.allclose(path[1], path[2])


def test_ddim_with_eta_zero_is_deterministic_given_x_T():
    schedule = _schedule()
    noise = jax.random.normal(jax.random.key(0), (2, 4, 4, 1))

    def predict(xt, t):  # any fixed function of (x_t, t) will do
        out = jnp.tanh(xt) * (t[:, None, None, None] / 50.0)
        return schedule.split_prediction("epsilon", xt, t, out, clip=True)

    draw = lambda eta, seed: diffusion.sample(
        schedule, predict, noise, jax.random.key(seed), "ddim", 10, eta, "large"
    )[0]
    np.testing.assert_array_equal(draw(0.0, 1), draw(0.0, 2))
    assert not np.allclose(draw(1.0, 1), draw(1.0, 2))


def test_patchify_round_trips_and_keeps_patches_whole():
    x = jnp.arange(2 * 8 * 8 * 3, dtype=jnp.float32).reshape(2, 8, 8, 3)
    tokens = patchify(x, 4)
    assert tokens.shape == (2, 4, 48)
    np.testing.assert_array_equal(tokens[:, 1].reshape(2, 4, 4, 3), x[:, :4, 4:])
    np.testing.assert_array_equal(unpatchify(tokens, 4, 8, 3), x)


def test_ddpm_cifar10_config_has_the_papers_35_7m_parameters():
    task = build_task(load_config(f"{REPO}/experiments/ddpm_cifar10.py:paper"), splits=NONE)
    shapes = jax.eval_shape(
        lambda r: nn.meta.unbox(task.init_state(r).model.params), jax.random.key(0)
    )
    count = sum(x.size for x in jax.tree.leaves(shapes))
    assert abs(count - 35.7e6) / 35.7e6 < 0.01, count


@pytest.mark.parametrize("arch", ["unet", "dit"])
def test_denoisers_start_as_zero_and_keep_the_image_shape(arch):
    """Both denoisers' output layers start at zero (DDPM, adaLN-Zero), and labels matter."""
    task = build_task(
        diffusion_config(**{"model.arch": arch, "model.num_classes": "10"}), splits=NONE
    )
    x = jax.random.normal(jax.random.key(0), (2, 28, 28, 1))
    t, labels = jnp.asarray([3, 40]), jnp.asarray([1, 10])
    params = jax.jit(lambda r: nn.meta.unbox(task.init_state(r).model.params))(jax.random.key(1))
    apply = jax.jit(lambda p, labels: task.model.apply({"params": p}, x, t, labels))
    out = apply(params, labels)
    assert out.shape == x.shape and float(jnp.abs(out).max()) == 0.0
    nudged = jax.tree.map(lambda p: p + 0.01, params)
    a, b = apply(nudged, labels), apply(nudged, jnp.asarray([2, 10]))
    assert not np.allclose(a[0], b[0]) and np.allclose(a[1], b[1])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The test U-Net after 60 steps at batch 32 (T = 50), its workdir and its first eval."""
    workdir = tmp_path_factory.mktemp("diffusion")
    config = diffusion_config(
        **{"train.steps": "60", "train.batch_size": "32", "train.eval_every": "60", **ONE_DEVICE}
    )
    train(config, workdir, devices=jax.devices()[:1])
    return config, workdir


def test_loss_falls_and_the_bound_improves_from_an_untrained_model(trained):
    config, workdir = trained
    task, state, placement, step = restore_run(config, workdir, devices=jax.devices()[:1])
    assert step == 60
    from train.evaluators.heldout import evaluate_batches as evaluate
    from train.trainer import jit_eval_step

    untrained = state.replace(
        ema_params=nn.meta.unbox(task.init_state(jax.random.key(0))).ema_params
    )
    with placement.active():
        eval_step = jit_eval_step(task, placement)
        before = evaluate(task, untrained, eval_step, placement)
        after = evaluate(task, state, eval_step, placement)
    assert np.isfinite(before["eval/bpd"]) and after["eval/bpd"] < before["eval/bpd"] - 0.5
    assert after["eval/loss"] < before["eval/loss"]
    losses = [r["train/loss"] for r in read_metrics(workdir) if "train/loss" in r]
    assert np.mean(losses[-3:]) < 0.7 * losses[0], losses
    assert (workdir / "samples" / "samples_0000060.png").is_file()
    assert (workdir / "samples" / "denoising_0000060.png").is_file()


def test_samples_and_their_fid_record_the_sampler(trained):
    config, workdir = trained
    task, state, _, _ = restore_run(config, workdir, devices=jax.devices()[:1])
    chunks = list(task.sample_images(state, 5, seed=0))
    assert [c.shape for c in chunks] == [(5, 28, 28, 1)]
    assert chunks[0].min() >= 0.0 and chunks[0].max() <= 1.0
    # FID's own path is tested with the GAN and VAE; here only what diffusion adds to the record.
    task.sample_images = lambda state, count, seed: iter([task.reference_images("train")[:count]])
    scores = generated_image_scores(task, state, 300, ProjectionFeatures(), workdir / "cache")
    assert scores["eval/fid"] > 0 and scores["fid/num_samples"] == 300
    assert scores["fid/sampler"] == "ddim" and scores["fid/sample_steps"] == 5
    assert scores["fid/eta"] == 0.0 and scores["fid/clip_x0"] is True


def test_resume_is_exact(tmp_path):
    train(diffusion_config(**ONE_DEVICE), tmp_path / "straight", devices=jax.devices()[:1])
    halfway = diffusion_config(**ONE_DEVICE, **{"train.steps": "10"})
    train(halfway, tmp_path / "resumed", devices=jax.devices()[:1])
    train(diffusion_config(**ONE_DEVICE), tmp_path / "resumed", devices=jax.devices()[:1])
    assert_checkpoints_equal(tmp_path / "straight", tmp_path / "resumed", 20)


def test_sampling_sharded_over_eight_devices_matches_one_device():
    config = diffusion_config()
    task = build_task(config, splits=NONE)
    draws = []
    for devices in (jax.devices(), jax.devices()[:1]):
        mesh = partitioning.make_mesh(config.mesh if len(devices) > 1 else ONE_MESH, devices)
        state, _, _ = place_state(task, mesh, config.seed, None)
        nudged = jax.tree.map(lambda p: p + 0.02, state.ema_params)  # the output layer is zero
        draws.append(task.draw(nudged, jax.random.key(3), 12)[0])  # 12 rows padded to 16 for 8
    assert draws[0].shape == (12, 28, 28, 1) and draws[0].std() > 0.01
    np.testing.assert_allclose(draws[0], draws[1], atol=1e-5)


@pytest.mark.parametrize(
    "overrides",
    [
        {"model.arch": "dit", "diffusion.prediction": "v", "diffusion.schedule": "cosine"},
        {"model.num_classes": "10", "eval.guidance": "2.0"},
    ],
)
def test_dit_v_prediction_and_guided_variants_train_and_sample(tmp_path, overrides):
    config = diffusion_config(
        **{"train.steps": "4", "train.eval_every": "4", **ONE_DEVICE, **overrides}
    )
    metrics = train(config, tmp_path, devices=jax.devices()[:1])
    assert np.isfinite(metrics["train/loss"]) and np.isfinite(metrics["eval/bpd"])
    assert (tmp_path / "samples" / "samples_0000004.png").is_file()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"model.arch": "vit"}, "model.arch='vit' is unknown; allowed: unet, dit"),
        ({"eval.sampler": "euler"}, "eval.sampler='euler' is unknown; allowed: ddpm, ddim"),
        ({"diffusion.prediction": "x0"}, "diffusion.prediction='x0' is unknown"),
        ({"diffusion.schedule": "sigmoid"}, "diffusion.schedule='sigmoid' is unknown"),
        ({"eval.sample_steps": "51"}, "eval.sample_steps=51: allowed 1 to 50"),
        ({"eval.bpd_timesteps": "50"}, "eval.bpd_timesteps=50: allowed 1 to 49"),
        ({"model.arch": "dit", "model.patch_size": "5"}, "model.patch_size=5 does not divide"),
        ({"model.norm_groups": "3"}, "model.channels=8 must be divisible by model.norm_groups=3"),
    ],
)
def test_bad_diffusion_settings_are_refused(overrides, message):
    with pytest.raises(UserError, match=re.escape(message)):
        build_task(diffusion_config(**overrides), splits=NONE)


def test_bad_input_is_one_line_on_the_command_line(tmp_path):
    for override, message in (
        ("--config.data.name=binarized_mnist", "data.name='binarized_mnist' cannot be diffused"),
        ("--config.model.num_classes=5", "model.num_classes=5 but mnist has labels up to 9"),
    ):
        result = genlab(
            "train",
            "--config",
            f"{DIFFUSION_CONFIG}:test",
            "--workdir",
            str(tmp_path),
            f"--config.data.path={DATA / 'mnist'}",
            override,
        )
        assert result.returncode == 2 and message in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1


def test_genlab_sample_writes_a_picture_grid(trained, tmp_path):
    workdir = trained[1]
    assert_sample_grid(workdir, tmp_path / "grid.png")
