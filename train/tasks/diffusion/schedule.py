"""The Gaussian diffusion process of DDPM (Ho et al. 2020): noise schedules, the forward process,
its posterior, the DDPM and DDIM (Song et al. 2021) samplers and the variational bound.

Timesteps are indexed 0..T-1; index t is the paper's t + 1, so x_t has been noised t + 1 times
and index 0's reverse step is the decoder p(x_0 | x_1). Schedules are computed in float64 and
used in float32. Images live in [-1, 1] as 256 grey levels (the discretized decoder's bins).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import log_ndtr

from train.errors import UserError

SCHEDULES = ("linear", "cosine")
PREDICTIONS = ("epsilon", "v")
VARIANCES = ("small", "large")
SAMPLERS = ("ddpm", "ddim")

# predict(x_t, t) -> (epsilon, x_0): the denoiser's view of the noise and of the clean image
Predictor = Callable[[jax.Array, jax.Array], tuple[jax.Array, jax.Array]]


def beta_schedule(kind: str, steps: int, beta_start: float, beta_end: float) -> np.ndarray:
    """`linear`: DDPM's betas from beta_start to beta_end. `cosine`: Nichol & Dhariwal (2021),
    alpha_bar(t) = cos^2(((t/T) + s) / (1 + s) * pi/2) with s = 0.008, betas capped at 0.999."""
    if steps < 2:
        raise UserError(f"diffusion.timesteps={steps}: need at least 2")
    if kind == "linear":
        if not 0.0 < beta_start <= beta_end < 1.0:
            raise UserError(
                f"diffusion.beta_start={beta_start}, beta_end={beta_end}: need "
                "0 < beta_start <= beta_end < 1"
            )
        return np.linspace(beta_start, beta_end, steps, dtype=np.float64)
    if kind == "cosine":
        s = 0.008
        grid = np.arange(steps + 1, dtype=np.float64) / steps
        alpha_bar = np.cos((grid + s) / (1 + s) * math.pi / 2) ** 2
        return np.minimum(1.0 - alpha_bar[1:] / alpha_bar[:-1], 0.999)
    raise UserError(f"diffusion.schedule={kind!r} is unknown; allowed: {', '.join(SCHEDULES)}")


@dataclass(frozen=True)
class Schedule:
    """Per-timestep constants of the forward process and its posterior q(x_{t-1} | x_t, x_0)."""

    betas: np.ndarray

    @property
    def steps(self) -> int:
        return len(self.betas)

    def _table(self, values: np.ndarray, t: jax.Array, ndim: int) -> jax.Array:
        """values[t], shaped to broadcast against a batch of `ndim`-dimensional images."""
        picked = jnp.asarray(values, jnp.float32)[t]
        return picked.reshape(picked.shape + (1,) * (ndim - picked.ndim))

    @property
    def alpha_bar(self) -> np.ndarray:
        return np.cumprod(1.0 - self.betas)

    @property
    def alpha_bar_prev(self) -> np.ndarray:
        return np.append(1.0, self.alpha_bar[:-1])

    @property
    def posterior_variance(self) -> np.ndarray:
        return self.betas * (1.0 - self.alpha_bar_prev) / (1.0 - self.alpha_bar)

    def log_variance(self, kind: str) -> np.ndarray:
        """Log-variance of the reverse steps: `small` is the posterior's beta-tilde, `large` is
        beta (Ho et al.'s two choices). Index 0's beta-tilde is 0, so both use index 1's value
        there, as the DDPM code does."""
        if kind == "small":
            variance = self.posterior_variance
        elif kind == "large":
            variance = self.betas
        else:
            raise UserError(
                f"diffusion.variance={kind!r} is unknown; allowed: {', '.join(VARIANCES)}"
            )
        return np.log(np.append(self.posterior_variance[1], variance[1:]))

    # -- forward process -------------------------------------------------------------------------
    def q_sample(self, x0: jax.Array, t: jax.Array, noise: jax.Array) -> jax.Array:
        """x_t ~ q(x_t | x_0) in closed form: sqrt(alpha_bar) x_0 + sqrt(1 - alpha_bar) noise."""
        a = self.alpha_bar
        return (
            self._table(np.sqrt(a), t, x0.ndim) * x0
            + self._table(np.sqrt(1.0 - a), t, x0.ndim) * noise
        )

    def q_step(self, x_prev: jax.Array, t: jax.Array, noise: jax.Array) -> jax.Array:
        """One forward step x_{t-1} -> x_t: sqrt(1 - beta_t) x_{t-1} + sqrt(beta_t) noise."""
        b = self.betas
        return (
            self._table(np.sqrt(1.0 - b), t, x_prev.ndim) * x_prev
            + self._table(np.sqrt(b), t, x_prev.ndim) * noise
        )

    def posterior_mean(self, x0: jax.Array, xt: jax.Array, t: jax.Array) -> jax.Array:
        a, a_prev, b = self.alpha_bar, self.alpha_bar_prev, self.betas
        coef_x0 = b * np.sqrt(a_prev) / (1.0 - a)
        coef_xt = (1.0 - a_prev) * np.sqrt(1.0 - b) / (1.0 - a)
        return self._table(coef_x0, t, xt.ndim) * x0 + self._table(coef_xt, t, xt.ndim) * xt

    # -- what the network predicts ---------------------------------------------------------------
    def target(self, kind: str, x0: jax.Array, t: jax.Array, noise: jax.Array) -> jax.Array:
        """The regression target: the noise (`epsilon`) or v = sqrt(a) noise - sqrt(1 - a) x_0
        (Salimans & Ho 2022)."""
        if kind == "epsilon":
            return noise
        if kind == "v":
            a = self.alpha_bar
            return (
                self._table(np.sqrt(a), t, x0.ndim) * noise
                - self._table(np.sqrt(1.0 - a), t, x0.ndim) * x0
            )
        raise UserError(
            f"diffusion.prediction={kind!r} is unknown; allowed: {', '.join(PREDICTIONS)}"
        )

    def split_prediction(
        self, kind: str, xt: jax.Array, t: jax.Array, output: jax.Array, clip: bool
    ) -> tuple[jax.Array, jax.Array]:
        """(epsilon, x_0) from the network output; with `clip`, x_0 is clipped to [-1, 1] and
        epsilon recomputed from it, so both describe the same denoised image."""
        a = self.alpha_bar
        root_a = self._table(np.sqrt(a), t, xt.ndim)
        root_1ma = self._table(np.sqrt(1.0 - a), t, xt.ndim)
        if kind == "epsilon":
            eps = output
            x0 = (xt - root_1ma * eps) / root_a
        else:
            x0 = root_a * xt - root_1ma * output
            eps = root_1ma * xt + root_a * output
        if clip:
            x0 = jnp.clip(x0, -1.0, 1.0)
            eps = (xt - root_a * x0) / root_1ma
        return eps, x0


def normal_kl(mean1: jax.Array, log_var1: jax.Array, mean2: jax.Array, log_var2: jax.Array):
    """KL(N(mean1, exp(log_var1)) || N(mean2, exp(log_var2))), elementwise, in nats."""
    squared = (mean1 - mean2) ** 2
    return 0.5 * (
        log_var2 - log_var1 + jnp.exp(log_var1 - log_var2) + squared / jnp.exp(log_var2) - 1
    )


def discretized_gaussian_log_likelihood(
    x: jax.Array, mean: jax.Array, log_scale: jax.Array
) -> jax.Array:
    """log P(x) for x on 256 levels in [-1, 1] under a Gaussian integrated over each level's
    bin (width 2/255); the outermost bins extend to -inf and +inf (the DDPM decoder)."""
    half_bin = 1.0 / 255.0
    inv_std = jnp.exp(-log_scale)
    upper = inv_std * (x - mean + half_bin)
    lower = inv_std * (x - mean - half_bin)
    log_cdf_upper, log_survival_lower = log_ndtr(upper), log_ndtr(-lower)
    # The bin's mass Phi(upper) - Phi(lower), in log space from whichever tail is smaller, so
    # float32 keeps its precision far from the mean on either side.
    from_below = log_cdf_upper + _log1m_exp(log_ndtr(lower) - log_cdf_upper)
    from_above = log_survival_lower + _log1m_exp(log_ndtr(-upper) - log_survival_lower)
    log_bin = jnp.where(x > mean, from_above, from_below)
    return jnp.where(x < -0.999, log_cdf_upper, jnp.where(x > 0.999, log_survival_lower, log_bin))


def _log1m_exp(x: jax.Array) -> jax.Array:
    """log(1 - exp(x)) for x < 0."""
    return jnp.log1p(-jnp.exp(jnp.minimum(x, -1e-12)))


def _per_example(x: jax.Array) -> jax.Array:
    return x.reshape(x.shape[0], -1).sum(axis=1)


def prior_kl(schedule: Schedule, x0: jax.Array) -> jax.Array:
    """KL(q(x_T | x_0) || N(0, I)) per example, in nats (no parameters: a constant of the data)."""
    last = jnp.full((x0.shape[0],), schedule.steps - 1)
    mean = schedule.q_sample(x0, last, jnp.zeros_like(x0))
    log_var = jnp.log(1.0 - jnp.asarray(schedule.alpha_bar[-1], jnp.float32))
    return _per_example(normal_kl(mean, log_var, 0.0, 0.0))


def bound_term(
    schedule: Schedule,
    predict: Predictor,
    x0: jax.Array,
    t: jax.Array,
    noise: jax.Array,
    variance: str,
) -> jax.Array:
    """One term of the variational bound per example, in nats: at t = 0 the decoder's
    -log p(x_0 | x_1) (discretized Gaussian), else KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t))."""
    xt = schedule.q_sample(x0, t, noise)
    _, x0_hat = predict(xt, t)
    model_mean = schedule.posterior_mean(x0_hat, xt, t)
    model_log_var = schedule._table(schedule.log_variance(variance), t, x0.ndim)
    true_mean = schedule.posterior_mean(x0, xt, t)
    true_log_var = schedule._table(schedule.log_variance("small"), t, x0.ndim)
    kl = _per_example(normal_kl(true_mean, true_log_var, model_mean, model_log_var))
    decoder = -_per_example(
        discretized_gaussian_log_likelihood(x0, model_mean, 0.5 * model_log_var)
    )
    return jnp.where(t == 0, decoder, kl)


def variational_bound(
    schedule: Schedule,
    predict: Predictor,
    x0: jax.Array,
    rng: jax.Array,
    timesteps: int,
    variance: str,
) -> dict[str, jax.Array]:
    """-ELBO per example in nats: prior KL + decoder term + the KL terms of t = 1..T-1.

    With `timesteps` = T - 1 every KL term is computed (the exact bound). With fewer, t = 1..T-1
    is cut into that many equal strata and each example gets one random t per stratum, weighted
    by the stratum's size: an unbiased estimate of the same sum at a fraction of the cost.
    """
    batch, total = x0.shape[0], schedule.steps - 1
    if not 1 <= timesteps <= total:
        raise UserError(f"eval.bpd_timesteps={timesteps}: allowed 1 to {total} (T - 1)")
    edges = np.linspace(1, schedule.steps, timesteps + 1).round().astype(np.int32)
    # Entry 0 is the decoder term (t = 0, weight 1); entries 1..K are the strata.
    starts = jnp.asarray(np.append(0, edges[:-1]))
    sizes = jnp.asarray(np.append(1, np.diff(edges)), jnp.float32)
    t_rng, noise_rng = jax.random.split(rng)
    offsets = jax.random.uniform(t_rng, (timesteps + 1, batch))
    ts = starts[:, None] + jnp.floor(offsets * sizes[:, None]).astype(jnp.int32)

    def body(carry: None, inputs: tuple[jax.Array, jax.Array]) -> tuple[None, jax.Array]:
        index, t = inputs
        noise = jax.random.normal(jax.random.fold_in(noise_rng, index), x0.shape)
        return None, bound_term(schedule, predict, x0, t, noise, variance)

    # One network evaluation per entry, all through one scan body (one compiled copy).
    _, terms = jax.lax.scan(body, None, (jnp.arange(timesteps + 1), ts))
    prior = prior_kl(schedule, x0)
    nll = prior + jnp.sum(sizes[:, None] * terms, axis=0)
    return {"nll": nll, "prior": prior, "decoder": terms[0]}


def sampling_timesteps(total: int, steps: int) -> np.ndarray:
    """`steps` timesteps spread evenly over 0..total-1, always including both ends (DDIM's
    uniform skipping)."""
    if not 1 <= steps <= total:
        raise UserError(f"eval.sample_steps={steps}: allowed 1 to {total} (the timesteps T)")
    return np.unique(np.linspace(0, total - 1, steps).round().astype(np.int32))


def sample(
    schedule: Schedule,
    predict: Predictor,
    noise: jax.Array,
    rng: jax.Array,
    sampler: str,
    steps: int,
    eta: float,
    variance: str,
    frames: int = 0,
) -> tuple[jax.Array, jax.Array | None]:
    """Run the reverse process from x_T = `noise`; returns x_0 and, when `frames` > 0, that many
    snapshots of the chains spread evenly from x_T to x_0 (frames, batch, ...).

    `ddpm`: ancestral sampling through all T steps with the chosen variance. `ddim`: `steps`
    evenly spaced timesteps, x_prev = sqrt(a_prev) x_0 + sqrt(1 - a_prev - s^2) eps + s z with
    s = eta sqrt((1 - a_prev) / (1 - a)) sqrt(1 - a / a_prev); eta = 0 is deterministic.
    Both run as one `lax.scan`; the snapshots live in its carry, so memory does not grow with
    the number of steps.
    """
    batch = noise.shape[0]
    if sampler == "ddpm":
        ts = np.arange(schedule.steps)[::-1]
        log_var = jnp.asarray(schedule.log_variance(variance), jnp.float32)

        def update(x: jax.Array, t: jax.Array, extra: tuple) -> jax.Array:
            t_batch = jnp.full((batch,), t)
            _, x0 = predict(x, t_batch)
            mean = schedule.posterior_mean(x0, x, t_batch)
            z = jax.random.normal(jax.random.fold_in(rng, t), x.shape)
            return mean + jnp.where(t > 0, jnp.exp(0.5 * log_var[t]), 0.0) * z

        tables: list[jax.Array] = []
    elif sampler == "ddim":
        ts = sampling_timesteps(schedule.steps, steps)[::-1]
        a = np.asarray(schedule.alpha_bar, np.float64)
        a_now = a[ts]
        a_prev = np.append(a[ts[1:]], 1.0)  # the last step lands on x_0
        sigma = eta * np.sqrt((1 - a_prev) / (1 - a_now) * (1 - a_now / a_prev))
        direction = np.sqrt(np.maximum(1 - a_prev - sigma**2, 0.0))
        tables = [jnp.asarray(v, jnp.float32) for v in (np.sqrt(a_prev), direction, sigma)]

        def update(x: jax.Array, t: jax.Array, extra: tuple) -> jax.Array:
            root_a_prev, towards_x, noise_scale = extra
            eps, x0 = predict(x, jnp.full((batch,), t))
            z = jax.random.normal(jax.random.fold_in(rng, t), x.shape)
            return root_a_prev * x0 + towards_x * eps + noise_scale * z

    else:
        raise UserError(f"eval.sampler={sampler!r} is unknown; allowed: {', '.join(SAMPLERS)}")

    # slot[i]: where the state after step i goes among the snapshots (-1: not kept)
    moments = np.linspace(0, len(ts), frames).round().astype(int) if frames else np.zeros(0)
    slot = np.full(len(ts), -1)
    for position, moment in enumerate(moments):
        if moment > 0:
            slot[moment - 1] = position
    snapshots = jnp.zeros((frames, *noise.shape), noise.dtype)
    if frames:
        snapshots = snapshots.at[0].set(noise)

    def step(carry: tuple[jax.Array, jax.Array], inputs: tuple) -> tuple[tuple, None]:
        x, kept = carry
        t, where, *extra = inputs
        x = update(x, t, tuple(extra))
        if frames:
            kept = jnp.where(where >= 0, kept.at[jnp.maximum(where, 0)].set(x), kept)
        return (x, kept), None

    inputs = (jnp.asarray(ts), jnp.asarray(slot), *tables)
    (final, kept), _ = jax.lax.scan(step, (noise, snapshots), inputs)
    return final, kept if frames else None
