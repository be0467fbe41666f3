"""Token cross-entropy computed in float32 from logits of any dtype, without a float32 copy.

A language model's logits are its largest activation (GPT-2: 16,384 tokens x 50,304 entries per
step). Upcasting them before the loss makes XLA keep a float32 copy for the backward pass; here
the forward reduces the low-precision logits in float32 on the fly and saves only them and the
log-normaliser, and the backward writes the gradient straight in the logits' dtype.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


@jax.custom_vjp
def token_cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """-log softmax(logits)[label] per position, in float32: (..., vocab), (...) -> (...)."""
    return _forward(logits, labels)[0]


def _forward(logits: jax.Array, labels: jax.Array):
    wide = logits.astype(jnp.float32)
    log_normaliser = jax.nn.logsumexp(wide, axis=-1)
    label_logits = jnp.take_along_axis(wide, labels[..., None], axis=-1)[..., 0]
    return log_normaliser - label_logits, (logits, labels, log_normaliser)


def _backward(saved, grad: jax.Array):
    logits, labels, log_normaliser = saved
    probs = jnp.exp(logits.astype(jnp.float32) - log_normaliser[..., None])
    one_hot = jax.nn.one_hot(labels, logits.shape[-1], dtype=jnp.float32)
    logits_grad = ((probs - one_hot) * grad[..., None]).astype(logits.dtype)
    return logits_grad, np.zeros(labels.shape, jax.dtypes.float0)


token_cross_entropy.defvjp(_forward, _backward)
