"""Generative adversarial networks: a generator and a discriminator trained against each other.

One jit-compiled step makes `n_critic` discriminator updates (each on its own real batch) and
then one generator update; both networks, both Optax optimizers, the generator's EMA
copy and the discriminator's spectral-norm vectors live in one `GANState`, which the generic
trainer shards, donates and checkpoints like any other state. Losses: non-saturating (Goodfellow
et al. 2014), hinge (Lim & Ye 2017; Miyato et al. 2018) and WGAN-GP (Gulrajani et al. 2017), with
an optional R1 penalty (Mescheder et al. 2018). Evaluation, samples and FID use the EMA generator.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import struct

from models.gan import D_NORMS, SPECTRAL, UPSAMPLING, Discriminator, Generator
from train.capabilities import ImageSampler, SampleWriter
from train.data import images as image_data
from train.data.images import ImageData
from train.data.splits import Splits
from train.errors import UserError
from train.optim import make_optimizer
from train.pictures import save_grid
from train.state import TrainState, ema_update, step_rng
from train.tasks import base

LOSSES = ("nonsaturating", "hinge", "wgan")
EVAL_SEED_OFFSET = 4099
SAMPLE_CHUNK = 500  # generator batch when drawing many samples (its batch norm sees this many)


class GANState(struct.PyTreeNode):
    """Everything one GAN step reads and writes; `step` counts generator updates."""

    step: jax.Array
    generator: TrainState
    discriminator: TrainState
    ema_params: Any  # exponential moving average of the generator's parameters
    spectral: Any  # the discriminator's spectral-norm power-iteration state ({} without it)


def discriminator_loss(kind: str, real: jax.Array, fake: jax.Array) -> jax.Array:
    """Per-example discriminator loss from its logits on real and generated images."""
    if kind == "nonsaturating":
        return jax.nn.softplus(-real) + jax.nn.softplus(fake)
    if kind == "hinge":
        return jax.nn.relu(1.0 - real) + jax.nn.relu(1.0 + fake)
    if kind == "wgan":
        return fake - real
    raise UserError(f"loss.name={kind!r} is unknown; allowed: {', '.join(LOSSES)}")


def generator_loss(kind: str, fake: jax.Array) -> jax.Array:
    """Per-example generator loss: -log D(G(z)) for non-saturating, -D(G(z)) otherwise."""
    if kind == "nonsaturating":
        return jax.nn.softplus(-fake)
    return -fake


def build_models(
    c: ml_collections.ConfigDict, image_shape: tuple[int, int, int]
) -> tuple[Generator, Discriminator]:
    if image_shape[0] not in (28, 32):
        raise UserError(
            f"GAN images of shape {image_shape}: the DCGAN models support 28x28 and 32x32"
        )
    if c.upsample not in UPSAMPLING:
        raise UserError(
            f"model.upsample={c.upsample!r} is unknown; allowed: {', '.join(UPSAMPLING)}"
        )
    if c.d_norm not in D_NORMS:
        raise UserError(f"model.d_norm={c.d_norm!r} is unknown; allowed: {', '.join(D_NORMS)}")
    if c.num_classes < 0:
        raise UserError(f"model.num_classes={c.num_classes}: use 0 (unconditional) or more")
    generator = Generator(
        image_shape, width=c.g_width, num_classes=c.num_classes, upsample=c.upsample
    )
    discriminator = Discriminator(width=c.d_width, norm=c.d_norm, num_classes=c.num_classes)
    return generator, discriminator


class Task(base.ImageTask, ImageSampler, SampleWriter):
    batch_axes: ClassVar = {
        "image": ("batch", None, None, None, None),  # (batch, n_critic, H, W, C)
        "label": ("batch", None),
    }

    def __init__(
        self, config: ml_collections.ConfigDict, data: ImageData, workdir: Path | None = None
    ):
        super().__init__(config, data, workdir)
        d, c = config.data, config.model
        if config.loss.name not in LOSSES:
            raise UserError(
                f"loss.name={config.loss.name!r} is unknown; allowed: {', '.join(LOSSES)}"
            )
        if config.loss.n_critic < 1:
            raise UserError(f"loss.n_critic={config.loss.n_critic}: must be at least 1")
        if c.d_norm == "batch" and (config.loss.r1_gamma > 0 or config.loss.gp_weight > 0):
            raise UserError(
                "loss.r1_gamma / loss.gp_weight need per-example discriminator outputs, which "
                "model.d_norm='batch' mixes; allowed with them: model.d_norm=spectral or none"
            )
        self.image_shape = image_data.SHAPES[d.name]
        self.generator, self.discriminator = build_models(c, self.image_shape)
        self.g_tx = make_optimizer(config.optim_g)
        self.d_tx = make_optimizer(config.optim_d)
        self._generate_jit = jax.jit(self.generate_images)
        image_data.check_num_classes(data, c.num_classes)

    @classmethod
    def load_data(
        cls, config: ml_collections.ConfigDict, workdir: Path | None, splits: Splits
    ) -> ImageData:
        name = config.data.name
        if name not in image_data.DATASETS:
            raise UserError(
                f"data.name={name!r} is unknown; allowed: {', '.join(image_data.DATASETS)}"
            )
        return image_data.load_image_data(config.data, splits)

    # -- data ------------------------------------------------------------------------------------
    def _real(self, images: np.ndarray, seed: int, step: int) -> np.ndarray:
        x = image_data.scale(images, "symmetric")
        if self.config.data.random_flip:
            flip = np.random.default_rng([seed, step, 0xF1]).random(len(x)) < 0.5
            x = np.where(flip[:, None, None, None], x[:, :, ::-1], x)
        return x

    def train_batch(self, step: int) -> base.Batch:
        """`n_critic` real batches per step, laid out (batch, n_critic, ...) so the batch axis
        stays the sharded one."""
        c = self.config
        size, critics = c.train.batch_size, c.loss.n_critic
        stream = self.data.train_stream()
        rows = stream.indices(c.seed, step, size * critics)
        rows = rows.reshape(critics, size).T
        share = size // jax.process_count()
        rows = rows[jax.process_index() * share : (jax.process_index() + 1) * share]
        images = self._real(stream.images[rows.ravel()], c.seed, step)
        return {
            "image": images.reshape(*rows.shape, *self.image_shape),
            "label": np.maximum(stream.labels[rows], 0),
        }

    def eval_batches(self) -> Iterator[base.Batch]:
        size = self.config.train.eval_batch_size
        share = size // jax.process_count()
        mine = slice(jax.process_index() * share, (jax.process_index() + 1) * share)
        eval_images, eval_labels = self.data.eval_split()
        for start in range(0, len(eval_images) - size + 1, size):
            images = image_data.scale(eval_images[start : start + size], "symmetric")
            labels = np.maximum(eval_labels[start : start + size], 0)
            yield {"image": images[mine, None], "label": labels[mine, None]}

    # -- state -----------------------------------------------------------------------------------
    def _labels(self, labels: jax.Array) -> jax.Array | None:
        return labels if self.config.model.num_classes else None

    def init_state(self, rng: jax.Array) -> GANState:
        g_rng, d_rng = jax.random.split(rng)
        z = jnp.zeros((2, self.config.model.latent_dim), jnp.float32)
        labels = jnp.zeros((2,), jnp.int32)
        g_params = self.generator.init(g_rng, z, self._labels(labels))["params"]
        images = jnp.zeros((2, *self.image_shape), jnp.float32)
        d_variables = self.discriminator.init(d_rng, images, self._labels(labels))
        return GANState(
            step=jnp.zeros((), jnp.int32),
            generator=TrainState.create(g_params, self.g_tx),
            discriminator=TrainState.create(d_variables["params"], self.d_tx),
            ema_params=g_params,
            spectral=d_variables.get(SPECTRAL, {}),
        )

    # -- networks --------------------------------------------------------------------------------
    def generate_images(self, params: Any, z: jax.Array, labels: jax.Array) -> jax.Array:
        """Images in [-1, 1]; batch norm uses this batch's statistics (nothing is kept)."""
        images, _ = self.generator.apply(
            {"params": params}, z, self._labels(labels), mutable=["batch_stats"]
        )
        return images

    def discriminate(
        self, params: Any, spectral: Any, images: jax.Array, labels: jax.Array, update: bool
    ) -> tuple[jax.Array, Any]:
        """Logits, and the spectral-norm state after one power iteration when `update`."""
        variables = {"params": params, SPECTRAL: spectral} if spectral else {"params": params}
        if not update or not spectral:
            logits, _ = self.discriminator.apply(
                variables, images, self._labels(labels), mutable=["batch_stats"]
            )
            return logits, spectral
        logits, mutated = self.discriminator.apply(
            variables, images, self._labels(labels), update_stats=True, mutable=[SPECTRAL]
        )
        return logits, mutated[SPECTRAL]

    def _noise(self, rng: jax.Array, count: int) -> tuple[jax.Array, jax.Array]:
        z_rng, label_rng = jax.random.split(rng)
        z = jax.random.normal(z_rng, (count, self.config.model.latent_dim))
        labels = jax.random.randint(label_rng, (count,), 0, max(self.config.model.num_classes, 1))
        return z, labels

    def _input_gradient_norms(
        self, params: Any, spectral: Any, images: jax.Array, labels: jax.Array
    ) -> jax.Array:
        """||d D(x) / dx|| per example (for the R1 and WGAN-GP penalties)."""

        def total(x: jax.Array) -> jax.Array:
            return self.discriminate(params, spectral, x, labels, update=False)[0].sum()

        grads = jax.grad(total)(images)
        return jnp.sqrt(jnp.sum(grads**2, axis=(1, 2, 3)) + 1e-12)

    # -- the step --------------------------------------------------------------------------------
    def _discriminator_update(
        self, state: GANState, real: jax.Array, labels: jax.Array, rng: jax.Array
    ) -> tuple[GANState, dict[str, jax.Array]]:
        loss_config = self.config.loss
        fake_rng, mix_rng = jax.random.split(rng)
        z, fake_labels = self._noise(fake_rng, real.shape[0])
        fake = jax.lax.stop_gradient(self.generate_images(state.generator.params, z, fake_labels))

        def loss_fn(params: Any) -> tuple[jax.Array, tuple[Any, dict[str, jax.Array]]]:
            if self.config.model.d_norm == "batch":  # separate real and fake statistics (DCGAN)
                real_logits, spectral = self.discriminate(params, {}, real, labels, False)
                fake_logits, _ = self.discriminate(params, {}, fake, fake_labels, False)
            else:  # one call on both: one power iteration per update
                logits, spectral = self.discriminate(
                    params,
                    state.spectral,
                    jnp.concatenate([real, fake]),
                    jnp.concatenate([labels, fake_labels]),
                    update=True,
                )
                real_logits, fake_logits = jnp.split(logits, 2)
            loss = discriminator_loss(loss_config.name, real_logits, fake_logits).mean()
            metrics = {
                "train/d_loss": loss,
                "train/d_real": real_logits.mean(),
                "train/d_fake": fake_logits.mean(),
            }
            if loss_config.r1_gamma > 0:
                norms = self._input_gradient_norms(params, spectral, real, labels)
                r1 = jnp.mean(norms**2)
                metrics["train/r1"] = r1
                loss = loss + 0.5 * loss_config.r1_gamma * r1
            if loss_config.gp_weight > 0:
                mix = jax.random.uniform(mix_rng, (real.shape[0], 1, 1, 1))
                between = mix * real + (1.0 - mix) * fake
                norms = self._input_gradient_norms(params, spectral, between, labels)
                gp = jnp.mean((norms - 1.0) ** 2)
                metrics["train/gp"] = gp
                loss = loss + loss_config.gp_weight * gp
            return loss, (spectral, metrics)

        grads, (spectral, metrics) = jax.grad(loss_fn, has_aux=True)(state.discriminator.params)
        metrics["train/d_grad_norm"] = optax.tree.norm(grads)
        state = state.replace(
            discriminator=state.discriminator.apply_gradients(grads), spectral=spectral
        )
        return state, metrics

    def _generator_update(
        self, state: GANState, rng: jax.Array
    ) -> tuple[GANState, dict[str, jax.Array]]:
        z, labels = self._noise(rng, self.config.train.batch_size)

        def loss_fn(params: Any) -> jax.Array:
            fake = self.generate_images(params, z, labels)
            logits, _ = self.discriminate(
                state.discriminator.params, state.spectral, fake, labels, update=False
            )
            return generator_loss(self.config.loss.name, logits).mean()

        loss, grads = jax.value_and_grad(loss_fn)(state.generator.params)
        generator = state.generator.apply_gradients(grads)
        decay = self.config.model.ema_decay
        ema = ema_update(generator.params, state.ema_params, decay, state.step)
        state = state.replace(step=state.step + 1, generator=generator, ema_params=ema)
        return state, {"train/g_loss": loss, "train/g_grad_norm": optax.tree.norm(grads)}

    def train_step(self, state: GANState, batch: base.Batch) -> tuple[GANState, dict]:
        rng = step_rng(self.config.seed, state.step)
        critics = self.config.loss.n_critic

        # Unrolled rather than a lax.scan: n_critic is small, and XLA's CPU backend runs the
        # convolutions inside a loop body several times slower (2.6 s vs 0.35 s per step).
        for k in range(critics):
            rng_k = jax.random.fold_in(rng, k)
            state, d_metrics = self._discriminator_update(
                state, batch["image"][:, k], batch["label"][:, k], rng_k
            )
        state, g_metrics = self._generator_update(state, jax.random.fold_in(rng, critics))
        metrics = {**d_metrics, **g_metrics}
        # One number for the progress bar and the trainer's non-finite check; the two losses
        # are logged separately.
        metrics["train/loss"] = metrics["train/d_loss"] + metrics["train/g_loss"]
        return state, metrics

    # -- evaluation ------------------------------------------------------------------------------
    def eval_step(self, state: GANState, batch: base.Batch) -> dict[str, jax.Array]:
        """The discriminator's view of held-out real images and of EMA-generator samples."""
        real, labels = batch["image"][:, 0], batch["label"][:, 0]
        rng = step_rng(self.config.seed + EVAL_SEED_OFFSET, jnp.zeros((), jnp.int32))
        z, fake_labels = self._noise(rng, real.shape[0])
        fake = self.generate_images(state.ema_params, z, fake_labels)
        d = state.discriminator.params
        real_logits, _ = self.discriminate(d, state.spectral, real, labels, update=False)
        fake_logits, _ = self.discriminate(d, state.spectral, fake, fake_labels, update=False)
        loss = discriminator_loss(self.config.loss.name, real_logits, fake_logits)
        return {
            "d_loss_sum": loss.sum(),
            "d_real_sum": real_logits.sum(),
            "d_fake_sum": fake_logits.sum(),
            "d_correct_sum": jnp.sum(real_logits > 0) + jnp.sum(fake_logits < 0),
            "count": jnp.asarray(real.shape[0], jnp.float32),
        }

    def summarize_eval(self, sums: dict[str, Any]) -> dict[str, float]:
        count = float(sums["count"])
        return {
            "eval/d_loss": float(sums["d_loss_sum"]) / count,
            "eval/d_real": float(sums["d_real_sum"]) / count,
            "eval/d_fake": float(sums["d_fake_sum"]) / count,
            "eval/d_accuracy": float(sums["d_correct_sum"]) / (2 * count),
        }

    # -- generated images (pictures, FID) --------------------------------------------------------
    def _draw(self, params: Any, rng: jax.Array, count: int) -> np.ndarray:
        labels = jnp.arange(count) % max(self.config.model.num_classes, 1)  # balanced classes
        z = jax.random.normal(rng, (count, self.config.model.latent_dim))
        return to_unit(self._generate_jit(params, z, labels))

    def sampling_settings(self) -> dict[str, Any]:
        return {"generator": "ema"}

    def sample_images(self, state: GANState, count: int, seed: int) -> Iterator[np.ndarray]:
        """EMA-generator samples in [0, 1], `SAMPLE_CHUNK` at a time."""
        for index, start in enumerate(range(0, count, SAMPLE_CHUNK)):
            rng = jax.random.fold_in(jax.random.key(seed), index)
            yield self._draw(state.ema_params, rng, min(SAMPLE_CHUNK, count - start))

    def write_samples(self, state: GANState, step: int, workdir: Path) -> None:
        """The same noise at every eval, through the EMA generator: progress is visible by
        flipping through `samples/samples_<step>.png`. Class-conditional models get one column
        per class (the same z along each row)."""
        classes, rows = self.config.model.num_classes, 8
        columns = classes or 8
        noise = jax.random.key(self.config.seed)
        if classes:
            z = jnp.repeat(
                jax.random.normal(noise, (rows, self.config.model.latent_dim)), classes, 0
            )
        else:
            z = jax.random.normal(noise, (rows * columns, self.config.model.latent_dim))
        labels = jnp.tile(jnp.arange(columns), rows)
        images = to_unit(self._generate_jit(state.ema_params, z, labels))
        if jax.process_index() == 0:
            save_grid(images, workdir / "samples" / f"samples_{step:07d}.png", columns)
        return None


def to_unit(images: jax.Array) -> np.ndarray:
    """Generator output in [-1, 1] to [0, 1] floats on the host."""
    return (np.asarray(images, np.float32) + 1.0) / 2.0
