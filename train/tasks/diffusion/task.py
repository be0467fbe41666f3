"""Denoising diffusion models: epsilon- or v-prediction training with a U-Net or DiT denoiser,
an EMA copy of the weights for evaluation, optional classifier-free guidance, DDPM/DDIM sampling
(one `lax.scan`, the batch sharded over the devices), the variational bound in bits/dim,
FID, and pictures (samples and a denoising strip x_T ... x_0) at every eval."""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import struct
from jax.sharding import NamedSharding, PartitionSpec

from models.dit import DiT
from models.unet import UNet
from train.capabilities import ImageSampler, SampleWriter
from train.data import images as image_data
from train.data.images import ImageData
from train.data.splits import Splits
from train.errors import UserError
from train.optim import make_optimizer
from train.pictures import save_grid
from train.state import TrainState, ema_update, gradient_step, step_rng
from train.tasks import base
from train.tasks.diffusion import schedule as diffusion

ARCHS = ("unet", "dit")
EVAL_SEED_OFFSET = 3571
SAMPLE_CHUNK = 500  # images drawn at once for FID
STRIP_ROWS, STRIP_COLUMNS = 8, 10  # the denoising strip: 8 chains, 10 moments from x_T to x_0


class DiffusionState(struct.PyTreeNode):
    """The trained network and its exponential moving average (used for eval and samples)."""

    model: TrainState
    ema_params: Any


def build_model(c: ml_collections.ConfigDict, timesteps: int, image_shape: tuple) -> Any:
    if c.arch not in ARCHS:
        raise UserError(f"model.arch={c.arch!r} is unknown; allowed: {', '.join(ARCHS)}")
    if c.num_classes < 0:
        raise UserError(f"model.num_classes={c.num_classes}: use 0 (unconditional) or more")
    if c.arch == "unet":
        if c.channels % c.norm_groups:
            raise UserError(
                f"model.channels={c.channels} must be divisible by model.norm_groups="
                f"{c.norm_groups} (GroupNorm)"
            )
        return UNet(
            channels=c.channels,
            channel_mults=tuple(c.channel_mults),
            num_res_blocks=c.num_res_blocks,
            attention_resolutions=tuple(c.attention_resolutions),
            dropout=c.dropout,
            norm_groups=c.norm_groups,
            num_heads=c.num_heads,
            num_timesteps=timesteps,
            num_classes=c.num_classes,
        )
    if image_shape[0] % c.patch_size:
        raise UserError(
            f"model.patch_size={c.patch_size} does not divide the {image_shape[0]}-pixel images"
        )
    if c.width % c.num_heads:
        raise UserError(f"model.width={c.width} must be divisible by model.num_heads")
    return DiT(
        patch_size=c.patch_size,
        width=c.width,
        depth=c.depth,
        num_heads=c.num_heads,
        mlp_ratio=c.mlp_ratio,
        dropout=c.dropout,
        num_timesteps=timesteps,
        num_classes=c.num_classes,
    )


class Task(base.ImageTask, ImageSampler, SampleWriter):
    def __init__(
        self, config: ml_collections.ConfigDict, data: ImageData, workdir: Path | None = None
    ):
        super().__init__(config, data, workdir)
        p = config.diffusion
        for key, value, allowed in (
            ("diffusion.prediction", p.prediction, diffusion.PREDICTIONS),
            ("diffusion.variance", p.variance, diffusion.VARIANCES),
            ("eval.sampler", config.eval.sampler, diffusion.SAMPLERS),
        ):
            if value not in allowed:
                raise UserError(f"{key}={value!r} is unknown; allowed: {', '.join(allowed)}")
        self.schedule = diffusion.Schedule(
            diffusion.beta_schedule(p.schedule, p.timesteps, p.beta_start, p.beta_end)
        )
        diffusion.sampling_timesteps(p.timesteps, config.eval.sample_steps)  # checks the count
        if not 1 <= config.eval.bpd_timesteps < p.timesteps:
            raise UserError(
                f"eval.bpd_timesteps={config.eval.bpd_timesteps}: allowed 1 to {p.timesteps - 1} "
                "(T - 1 computes the bound exactly)"
            )
        self.image_shape = image_data.SHAPES[config.data.name]
        self.model = build_model(config.model, p.timesteps, self.image_shape)
        self.tx = make_optimizer(config.optim)
        image_data.check_num_classes(data, config.model.num_classes)

    @classmethod
    def load_data(
        cls, config: ml_collections.ConfigDict, workdir: Path | None, splits: Splits
    ) -> ImageData:
        name = config.data.name
        if name not in image_data.SHAPES or name == "binarized_mnist":
            allowed = ", ".join(n for n in image_data.SHAPES if n != "binarized_mnist")
            raise UserError(f"data.name={name!r} cannot be diffused; allowed: {allowed}")
        return image_data.load_image_data(config.data, splits)

    # -- data ------------------------------------------------------------------------------------
    def train_batch(self, step: int) -> base.Batch:
        c = self.config
        stream = self.data.train_stream()
        rows = stream.indices(
            c.seed, step, c.train.batch_size, jax.process_index(), jax.process_count()
        )
        images = image_data.scale(stream.images[rows], "symmetric")
        if c.data.random_flip:
            flip = np.random.default_rng([c.seed, step, 0xF1]).random(len(images)) < 0.5
            images = np.where(flip[:, None, None, None], images[:, :, ::-1], images)
        return {
            "image": images,
            "label": np.maximum(stream.labels[rows], 0),
            "weight": np.ones(len(rows), np.float32),
        }

    def eval_batches(self) -> Iterator[base.Batch]:
        size = self.config.train.eval_batch_size
        eval_images, eval_labels = self.data.eval_split()
        count = len(eval_images)
        share = size // jax.process_count()
        mine = slice(jax.process_index() * share, (jax.process_index() + 1) * share)
        for start in range(0, count, size):
            rows = np.arange(start, start + size)
            weight = (rows < count).astype(np.float32)  # the last batch is padded
            rows = np.minimum(rows, count - 1)
            yield {
                "image": image_data.scale(eval_images[rows], "symmetric")[mine],
                "label": np.maximum(eval_labels[rows], 0)[mine],
                "weight": weight[mine],
            }

    # -- the network -----------------------------------------------------------------------------
    def init_state(self, rng: jax.Array) -> DiffusionState:
        x = jnp.zeros((1, *self.image_shape), jnp.float32)
        t, labels = jnp.zeros((1,), jnp.int32), jnp.zeros((1,), jnp.int32)
        params = self.model.init(rng, x, t, self._labels(labels))["params"]
        return DiffusionState(model=TrainState.create(params, self.tx), ema_params=params)

    def _labels(self, labels: jax.Array) -> jax.Array | None:
        return labels if self.config.model.num_classes else None

    def predictor(self, params: Any, labels: jax.Array, guidance: float) -> diffusion.Predictor:
        """predict(x_t, t) -> (epsilon, x_0) of the EMA (or any) weights. With classes and
        `guidance` != 1, classifier-free guidance: out = uncond + guidance (cond - uncond)."""
        classes, p = self.config.model.num_classes, self.config.diffusion
        clip = self.config.eval.clip_x0

        def predict(xt: jax.Array, t: jax.Array) -> tuple[jax.Array, jax.Array]:
            if classes and guidance != 1.0:
                both = self.model.apply(
                    {"params": params},
                    jnp.concatenate([xt, xt]),
                    jnp.concatenate([t, t]),
                    jnp.concatenate([labels, jnp.full_like(labels, classes)]),
                )
                cond, uncond = jnp.split(both, 2)
                output = uncond + guidance * (cond - uncond)
            else:
                output = self.model.apply({"params": params}, xt, t, self._labels(labels))
            return self.schedule.split_prediction(p.prediction, xt, t, output, clip)

        return predict

    # -- the step --------------------------------------------------------------------------------
    def loss_fn(self, params: Any, batch: base.Batch, rng: jax.Array):
        p, classes = self.config.diffusion, self.config.model.num_classes
        x0 = batch["image"]
        t_rng, noise_rng, drop_rng, label_rng = jax.random.split(rng, 4)
        t = jax.random.randint(t_rng, (x0.shape[0],), 0, p.timesteps)
        noise = jax.random.normal(noise_rng, x0.shape)
        labels = batch["label"]
        if classes:  # drop labels to "no label" so the same network learns both (CFG)
            dropped = jax.random.uniform(label_rng, labels.shape) < self.config.model.label_dropout
            labels = jnp.where(dropped, classes, labels)
        output = self.model.apply(
            {"params": params},
            self.schedule.q_sample(x0, t, noise),
            t,
            self._labels(labels),
            deterministic=False,
            rngs={"dropout": drop_rng},
        )
        target = self.schedule.target(p.prediction, x0, t, noise)
        loss = jnp.mean((output - target) ** 2)
        return loss, {"train/loss": loss}

    def train_step(self, state: DiffusionState, batch: base.Batch):
        model, metrics = gradient_step(
            state.model, batch, self.loss_fn, self.config.seed, self.config.train.grad_accum
        )
        ema = ema_update(model.params, state.ema_params, self.config.model.ema_decay, model.step)
        return DiffusionState(model=model, ema_params=ema), metrics

    # -- evaluation ------------------------------------------------------------------------------
    def eval_step(self, state: DiffusionState, batch: base.Batch) -> dict[str, jax.Array]:
        """The training loss and the variational bound of held-out images, under EMA weights."""
        c = self.config
        rng = step_rng(c.seed + EVAL_SEED_OFFSET, jnp.zeros((), jnp.int32))
        loss_rng, bound_rng = jax.random.split(rng)
        x0, weight = batch["image"], batch["weight"]
        t_rng, noise_rng = jax.random.split(loss_rng)
        t = jax.random.randint(t_rng, (x0.shape[0],), 0, c.diffusion.timesteps)
        noise = jax.random.normal(noise_rng, x0.shape)
        output = self.model.apply(
            {"params": state.ema_params},
            self.schedule.q_sample(x0, t, noise),
            t,
            self._labels(batch["label"]),
        )
        target = self.schedule.target(c.diffusion.prediction, x0, t, noise)
        mse = jnp.mean((output - target) ** 2, axis=(1, 2, 3))
        # The bound is that of the conditional model at the true label (guidance 1).
        predict = self.predictor(state.ema_params, batch["label"], 1.0)
        bound = diffusion.variational_bound(
            self.schedule, predict, x0, bound_rng, c.eval.bpd_timesteps, c.diffusion.variance
        )
        return {
            "loss_sum": jnp.sum(weight * mse),
            "nll_sum": jnp.sum(weight * bound["nll"]),
            "prior_sum": jnp.sum(weight * bound["prior"]),
            "decoder_sum": jnp.sum(weight * bound["decoder"]),
            "count": jnp.sum(weight),
        }

    def summarize_eval(self, sums: dict[str, Any]) -> dict[str, float]:
        count = float(sums["count"])
        to_bits = 1.0 / (math.prod(self.image_shape) * math.log(2.0))
        nll = float(sums["nll_sum"]) / count
        return {
            "eval/loss": float(sums["loss_sum"]) / count,
            "eval/nll": nll,
            "eval/bpd": nll * to_bits,
            "eval/bpd_prior": float(sums["prior_sum"]) / count * to_bits,
            "eval/bpd_decoder": float(sums["decoder_sum"]) / count * to_bits,
            "eval/bpd_timesteps": float(self.config.eval.bpd_timesteps),
        }

    # -- sampling --------------------------------------------------------------------------------
    def sampling_settings(self) -> dict[str, Any]:
        e = self.config.eval
        settings = {"sampler": e.sampler, "sample_steps": self._steps(), "clip_x0": e.clip_x0}
        if e.sampler == "ddim":
            settings["eta"] = e.eta
        else:
            settings["variance"] = self.config.diffusion.variance
        if self.config.model.num_classes:
            settings["guidance"] = e.guidance
        return settings

    def _steps(self) -> int:
        e = self.config.eval
        return self.config.diffusion.timesteps if e.sampler == "ddpm" else e.sample_steps

    @functools.partial(jax.jit, static_argnums=(0, 4, 5))
    def _sample(
        self, params: Any, noise: jax.Array, rng: jax.Array, frames: int, sharding: Any
    ) -> tuple[jax.Array, jax.Array | None]:
        e, classes = self.config.eval, self.config.model.num_classes
        if sharding is not None:  # each device denoises its own rows
            noise = jax.lax.with_sharding_constraint(noise, sharding)
        labels = jnp.arange(noise.shape[0]) % max(classes, 1)  # balanced classes
        return diffusion.sample(
            self.schedule,
            self.predictor(params, labels, e.guidance),
            noise,
            rng,
            e.sampler,
            e.sample_steps,
            e.eta,
            self.config.diffusion.variance,
            frames,
        )

    def draw(
        self, params: Any, rng: jax.Array, count: int, frames: int = 0
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """`count` samples in [0, 1] from x_T drawn with `rng` (and `frames` snapshots of their
        chains from x_T to x_0)."""
        sharding, ways = _batch_sharding(params)
        padded = -(-count // ways) * ways
        noise_rng, sample_rng = jax.random.split(rng)
        noise = jax.random.normal(noise_rng, (padded, *self.image_shape))
        images, path = self._sample(params, noise, sample_rng, frames, sharding)
        unit = lambda x: np.clip((np.asarray(x, np.float32) + 1.0) / 2.0, 0.0, 1.0)
        return unit(images[:count]), None if path is None else unit(path[:, :count])

    def sample_images(self, state: DiffusionState, count: int, seed: int) -> Iterator[np.ndarray]:
        """EMA samples in [0, 1], `SAMPLE_CHUNK` at a time, with the configured sampler."""
        for index, start in enumerate(range(0, count, SAMPLE_CHUNK)):
            rng = jax.random.fold_in(jax.random.key(seed), index)
            yield self.draw(state.ema_params, rng, min(SAMPLE_CHUNK, count - start))[0]

    def write_samples(self, state: DiffusionState, step: int, workdir: Path) -> None:
        """The same x_T at every eval: an 8x8 grid of samples, and a denoising strip of 8 chains
        shown at 10 moments from x_T (left) to x_0 (right)."""
        # A chain of n steps has n + 1 distinct moments: never ask for more (they would repeat).
        columns = min(STRIP_COLUMNS, self._steps() + 1)
        images, path = self.draw(state.ema_params, jax.random.key(self.config.seed), 64, columns)
        strip = path[:, :STRIP_ROWS].transpose(1, 0, 2, 3, 4).reshape(-1, *self.image_shape)
        if jax.process_index() == 0:
            folder = workdir / "samples"
            save_grid(images, folder / f"samples_{step:07d}.png", 8)
            save_grid(strip, folder / f"denoising_{step:07d}.png", columns)
        return None


def _batch_sharding(params: Any) -> tuple[NamedSharding | None, int]:
    """The sharding that splits a batch over the data-parallel axes of the mesh the parameters
    live on (None outside a mesh), and how many ways it splits."""
    sharding = jax.tree.leaves(params)[0].sharding
    if not isinstance(sharding, NamedSharding) or "data" not in sharding.mesh.shape:
        return None, 1
    mesh = sharding.mesh
    return NamedSharding(mesh, PartitionSpec(("data", "fsdp"))), mesh.shape["data"] * mesh.shape[
        "fsdp"
    ]
