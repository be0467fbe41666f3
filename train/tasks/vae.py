"""Variational autoencoders: ELBO or IWAE-k training, importance-weighted NLL, bits/dim, pictures,
and per-example scores (with AUROC when a class was held out of training) for anomaly detection."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from scipy import stats

from models.vae import VAE
from train.capabilities import ImageSampler, SampleWriter
from train.data import images as image_data
from train.data.images import ImageData
from train.data.splits import Splits
from train.errors import UserError
from train.optim import make_optimizer
from train.pictures import save_grid
from train.state import TrainState, gradient_step, step_rng
from train.tasks import base

OBJECTIVES = ("elbo", "iwae")
LIKELIHOODS = ("bernoulli", "logistic")
EVAL_SEED_OFFSET = 7919


def build_model(c: ml_collections.ConfigDict, image_shape: tuple[int, int, int]) -> VAE:
    if c.likelihood not in LIKELIHOODS:
        raise UserError(
            f"model.likelihood={c.likelihood!r} is unknown; allowed: {', '.join(LIKELIHOODS)}"
        )
    if c.arch not in ("mlp", "conv"):
        raise UserError(f"model.arch={c.arch!r} is unknown; allowed: mlp, conv")
    if len(c.latents) != len(c.hiddens) or not c.latents:
        raise UserError(
            f"model.latents={list(c.latents)} and model.hiddens={list(c.hiddens)} "
            "need one entry per stochastic layer each"
        )
    return VAE(
        latents=tuple(c.latents),
        hiddens=tuple(c.hiddens),
        image_shape=image_shape,
        likelihood=c.likelihood,
        arch=c.arch,
        conv_width=c.conv_width,
    )


def log_mean_exp(log_w: jax.Array, axis: int = 0) -> jax.Array:
    return jax.nn.logsumexp(log_w, axis=axis) - math.log(log_w.shape[axis])


def importance_weighted_nll(
    model: VAE, params: Any, x: jax.Array, rng: jax.Array, samples: int, chunk: int
) -> jax.Array:
    """-log (1/K) sum_k p(x, z_k) / q(z_k | x), K = samples, drawn `chunk` at a time so memory
    stays bounded; per example."""
    chunks = max(samples // chunk, 1)
    chunk = samples // chunks

    def body(running: jax.Array, index: jax.Array) -> tuple[jax.Array, None]:
        terms = model.apply({"params": params}, x, jax.random.fold_in(rng, index), chunk)
        log_w = terms["log_px_z"] + terms["log_pz"] - terms["log_qz"]
        return jnp.logaddexp(running, jax.nn.logsumexp(log_w, axis=0)), None

    start = jnp.full(x.shape[0], -jnp.inf)
    total, _ = jax.lax.scan(body, start, jnp.arange(chunks))
    return -(total - math.log(chunks * chunk))


def elbo_terms(terms: dict[str, jax.Array]) -> tuple[jax.Array, jax.Array]:
    """(reconstruction, KL) per example: closed-form KL for one stochastic layer, else Monte
    Carlo over the drawn samples."""
    reconstruction = terms["log_px_z"].mean(0)
    if "kl" in terms:
        return reconstruction, terms["kl"]
    return reconstruction, (terms["log_qz"] - terms["log_pz"]).mean(0)


def auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve of `scores` for telling positives from the rest (Mann-Whitney U
    divided by n_pos x n_neg)."""
    result = stats.mannwhitneyu(scores[positive], scores[~positive], alternative="two-sided")
    return float(result.statistic) / (positive.sum() * (~positive).sum())


class Task(base.ImageTask, ImageSampler, SampleWriter):
    def __init__(
        self, config: ml_collections.ConfigDict, data: ImageData, workdir: Path | None = None
    ):
        super().__init__(config, data, workdir)
        self.image_shape = image_data.SHAPES.get(config.data.name, (28, 28, 1))
        self.model = build_model(config.model, self.image_shape)
        self.tx = make_optimizer(config.optim)

    @classmethod
    def load_data(
        cls, config: ml_collections.ConfigDict, workdir: Path | None, splits: Splits
    ) -> ImageData:
        d = config.data
        if (
            config.model.likelihood == "bernoulli"
            and d.name != "binarized_mnist"
            and d.binarize != "dynamic"
        ):
            raise UserError(
                f"model.likelihood=bernoulli needs binary pixels: set "
                f"data.binarize=dynamic or data.name=binarized_mnist (got {d.name!r})"
            )
        if d.binarize not in ("dynamic", "none"):
            raise UserError(f"data.binarize={d.binarize!r} is unknown; allowed: dynamic, none")
        return image_data.load_image_data(d, splits, d.eval_split, d.holdout_class)

    # -- data ------------------------------------------------------------------------------------
    def _prepare(self, images: np.ndarray, seed: int, step: int) -> np.ndarray:
        d = self.config.data
        if d.binarize == "dynamic":
            return image_data.binarize(image_data.scale(images, "unit"), seed, step)
        if d.name == "binarized_mnist":
            return image_data.scale(images, "unit")
        return image_data.scale(
            images, "symmetric" if self.config.model.likelihood == "logistic" else d.scale
        )

    def train_batch(self, step: int) -> base.Batch:
        stream = self.data.train_stream()
        rows = stream.indices(
            self.config.seed,
            step,
            self.config.train.batch_size,
            jax.process_index(),
            jax.process_count(),
        )
        images = self._prepare(stream.images[rows], self.config.seed, step)
        return {
            "image": images,
            "label": stream.labels[rows],
            "weight": np.ones(len(rows), np.float32),
        }

    def eval_batches(self) -> Iterator[base.Batch]:
        size = self.config.train.eval_batch_size
        eval_images, eval_labels = self.data.eval_split()
        count = len(eval_images)
        share = size // jax.process_count()
        for index, start in enumerate(range(0, count, size)):
            rows = np.arange(start, start + size)
            weight = (rows < count).astype(np.float32)  # the last batch is padded
            rows = np.minimum(rows, count - 1)
            mine = slice(jax.process_index() * share, (jax.process_index() + 1) * share)
            images = self._prepare(eval_images[rows], self.config.seed + EVAL_SEED_OFFSET, index)
            yield {
                "image": images[mine],
                "label": eval_labels[rows][mine],
                "weight": weight[mine],
            }

    # -- state and steps -------------------------------------------------------------------------
    def init_state(self, rng: jax.Array) -> TrainState:
        x = jnp.zeros((1, *self.image_shape), jnp.float32)
        params = self.model.init(rng, x, jax.random.key(0))["params"]
        return TrainState.create(params, self.tx)

    def loss_fn(self, params: Any, batch: base.Batch, rng: jax.Array):
        c = self.config.objective
        terms = self.model.apply({"params": params}, batch["image"], rng, c.train_samples)
        reconstruction, kl = elbo_terms(terms)
        elbo = reconstruction - kl
        metrics = {
            "train/elbo": elbo.mean(),
            "train/recon": reconstruction.mean(),
            "train/kl": kl.mean(),
        }
        if c.name == "iwae":
            log_w = terms["log_px_z"] + terms["log_pz"] - terms["log_qz"]
            bound = log_mean_exp(log_w, axis=0)
            metrics["train/iwae_bound"] = bound.mean()
            loss = -bound.mean()
        elif c.name == "elbo":
            loss = -elbo.mean()
        else:
            raise UserError(f"objective.name={c.name!r} is unknown; allowed: {OBJECTIVES}")
        metrics["train/loss"] = loss
        return loss, metrics

    def train_step(self, state: TrainState, batch: base.Batch):
        return gradient_step(
            state, batch, self.loss_fn, self.config.seed, self.config.train.grad_accum
        )

    def eval_step(self, state: TrainState, batch: base.Batch) -> dict[str, jax.Array]:
        e = self.config.eval
        # One fixed key: every example still gets its own noise (its row of the draw), and
        # repeated evaluations of the same checkpoint agree exactly.
        rng = step_rng(self.config.seed + EVAL_SEED_OFFSET, jnp.zeros((), jnp.int32))
        x, weight = batch["image"], batch["weight"]
        terms = self.model.apply({"params": state.params}, x, rng, 1)
        reconstruction, kl = elbo_terms(terms)
        nll = importance_weighted_nll(self.model, state.params, x, rng, e.iwae_samples, e.chunk)
        return {
            "elbo_sum": jnp.sum(weight * (reconstruction - kl)),
            "recon_sum": jnp.sum(weight * reconstruction),
            "kl_sum": jnp.sum(weight * kl),
            "nll_sum": jnp.sum(weight * nll),
            "count": jnp.sum(weight),
            "per_example/nll": nll,
            "per_example/label": batch["label"],
            "per_example/weight": weight,
        }

    def summarize_eval(self, sums: dict[str, Any]) -> dict[str, float]:
        count = float(sums["count"])
        dims = math.prod(self.image_shape)
        nll = float(sums["nll_sum"]) / count
        metrics = {
            "eval/elbo": float(sums["elbo_sum"]) / count,
            "eval/recon": float(sums["recon_sum"]) / count,
            "eval/kl": float(sums["kl_sum"]) / count,
            "eval/nll": nll,
            "eval/bpd": nll / (dims * math.log(2.0)),
            "eval/loss": nll,
            "eval/iwae_samples": float(self.config.eval.iwae_samples),
        }
        holdout = self.config.data.holdout_class
        if holdout >= 0 and "per_example/nll" in sums:
            real = sums["per_example/weight"] > 0
            scores, labels = sums["per_example/nll"][real], sums["per_example/label"][real]
            metrics["eval/auroc"] = auroc(scores, labels == holdout)
        return metrics

    # -- generated images (FID) ----------------------------------------------------------------
    def sampling_settings(self) -> dict[str, Any]:
        return {"images": "decoder means of prior samples"}

    def sample_images(self, state: TrainState, count: int, seed: int) -> Iterator[np.ndarray]:
        """Decoder means of prior samples (Bernoulli probabilities / grey levels) in [0, 1]."""
        draw = jax.jit(
            lambda params, rng, n: self.model.apply(
                {"params": params}, rng, n, method=_sample_images
            ),
            static_argnums=2,
        )
        chunk = 500
        for index, start in enumerate(range(0, count, chunk)):
            n = min(chunk, count - start)
            images = draw(state.params, jax.random.fold_in(jax.random.key(seed), index), n)
            yield self._to_unit(np.asarray(images))

    # -- pictures --------------------------------------------------------------------------------
    def write_samples(self, state: TrainState, step: int, workdir: Path) -> None:
        pictures = draw_pictures(
            self.model, state.params, self._picture_inputs(), jax.random.key(self.config.seed)
        )
        if jax.process_index() == 0:
            folder = workdir / "samples"
            for name, (images, columns) in pictures.items():
                save_grid(self._to_unit(images), folder / f"{name}_{step:07d}.png", columns)
        return None

    def _picture_inputs(self) -> np.ndarray:
        loaded = self.data.eval_images  # `genlab sample` loads no data: blank inputs then
        images = loaded[:16] if loaded is not None else np.zeros((16, *self.image_shape), np.uint8)
        return self._prepare(images, self.config.seed + EVAL_SEED_OFFSET, 0)

    def _to_unit(self, images: np.ndarray) -> np.ndarray:
        if self.config.model.likelihood == "logistic":
            return (images + 1.0) / 2.0
        return images


def draw_pictures(
    model: VAE, params: Any, inputs: np.ndarray, rng: jax.Array
) -> dict[str, tuple[np.ndarray, int]]:
    """Prior samples (8x8), reconstructions (input beside its decoding) and interpolations
    between the posterior means of pairs of inputs (8 rows of 10 steps)."""
    samples = model.apply({"params": params}, rng, 64, method=_sample_images)
    decoded = model.apply({"params": params}, jnp.asarray(inputs), method=_reconstruct)
    pairs = np.stack([inputs, np.asarray(decoded)], axis=1).reshape(-1, *inputs.shape[1:])
    lines = model.apply(
        {"params": params}, jnp.asarray(inputs[:8]), jnp.asarray(inputs[8:16]), method=_interpolate
    )
    return {
        "samples": (np.asarray(samples), 8),
        "reconstructions": (pairs, 8),
        "interpolations": (np.asarray(lines).reshape(-1, *inputs.shape[1:]), 10),
    }


def _sample_images(model: VAE, rng: jax.Array, count: int) -> jax.Array:
    return model.mean_image(model.sample_z1(rng, count))


def _reconstruct(model: VAE, x: jax.Array) -> jax.Array:
    return model.mean_image(model.encode_mean(x))


def _interpolate(model: VAE, a: jax.Array, b: jax.Array, steps: int = 10) -> jax.Array:
    za, zb = model.encode_mean(a), model.encode_mean(b)
    t = jnp.linspace(0.0, 1.0, steps)[None, :, None]
    return model.mean_image(za[:, None] * (1 - t) + zb[:, None] * t)
