"""The train state and the gradient step every single-optimizer family shares."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct

Batch = dict[str, jax.Array]
# loss_fn(params, batch, rng) -> (scalar loss, dict of scalar metrics)
LossFn = Callable[[Any, Batch, jax.Array], tuple[jax.Array, dict[str, jax.Array]]]


class TrainState(struct.PyTreeNode):
    """Step counter, parameters and optimizer state; the optimizer itself is static."""

    step: jax.Array
    params: Any
    opt_state: Any
    tx: optax.GradientTransformation = struct.field(pytree_node=False)

    @classmethod
    def create(cls, boxed_params: Any, tx: optax.GradientTransformation) -> TrainState:
        """A state whose params and optimizer moments keep the params' logical-axis boxes.

        The trainer reads the boxes to shard the whole state, then unboxes it.
        """
        params = nn.meta.unbox(boxed_params)
        opt_state = tx.init(params)
        opt_state = optax.tree_map_params(
            tx,
            lambda value, box: box.replace_boxed(value) if _is_box(box) else value,
            opt_state,
            boxed_params,
            is_leaf=_is_box,
        )
        return cls(step=jnp.zeros((), jnp.int32), params=boxed_params, opt_state=opt_state, tx=tx)

    def apply_gradients(self, grads: Any) -> TrainState:
        updates, opt_state = self.tx.update(grads, self.opt_state, self.params)
        params = optax.apply_updates(self.params, updates)
        return self.replace(step=self.step + 1, params=params, opt_state=opt_state)


def _is_box(x: Any) -> bool:
    return isinstance(x, nn.meta.AxisMetadata)


def step_rng(seed: int, step: jax.Array) -> jax.Array:
    """The random key of one step: a pure function of (seed, step), so resumed runs match."""
    return jax.random.fold_in(jax.random.key(seed), step)


def ema_decay(decay: float, step: jax.Array) -> jax.Array:
    """The decay of a weight average at `step`, ramped up as min(decay, (1 + t) / (10 + t)), so
    early averages are not dominated by the random initialization (TensorFlow's num_updates
    rule)."""
    t = step.astype(jnp.float32)
    return jnp.minimum(decay, (1.0 + t) / (10.0 + t))


def ema_update(params: Any, average: Any, decay: float, step: jax.Array) -> Any:
    """The exponential moving average of the parameters after one more update."""
    return optax.incremental_update(params, average, 1.0 - ema_decay(decay, step))


def accumulated_grads(
    loss_fn: LossFn, params: Any, batch: Batch, rng: jax.Array, micro_batches: int
) -> tuple[Any, dict[str, jax.Array]]:
    """Mean gradient and metrics over `micro_batches` equal slices of the batch."""
    grad_fn = jax.grad(loss_fn, has_aux=True)
    if micro_batches == 1:
        return grad_fn(params, batch, rng)

    def split(x: jax.Array) -> jax.Array:
        return x.reshape(micro_batches, x.shape[0] // micro_batches, *x.shape[1:])

    def body(carry, inputs):
        index, micro = inputs
        grads, metrics = grad_fn(params, micro, jax.random.fold_in(rng, index))
        return jax.tree.map(jnp.add, carry, (grads, metrics)), None

    micro_batches_tree = jax.tree.map(split, batch)
    first = jax.tree.map(lambda x: x[0], micro_batches_tree)
    shapes = jax.eval_shape(grad_fn, params, first, rng)
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
    total, _ = jax.lax.scan(body, zeros, (jnp.arange(micro_batches), micro_batches_tree))
    return jax.tree.map(lambda x: x / micro_batches, total)


def gradient_step(
    state: TrainState, batch: Batch, loss_fn: LossFn, seed: int, micro_batches: int = 1
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimizer step: (accumulated) gradients, update, and the step's metrics."""
    rng = step_rng(seed, state.step)
    grads, metrics = accumulated_grads(loss_fn, state.params, batch, rng, micro_batches)
    metrics = dict(metrics, **{"train/grad_norm": optax.tree.norm(grads)})
    return state.apply_gradients(grads), metrics
