"""Greedy and beam search for conditional models (translation).

The searches drive a `step_fn(cache, tokens) -> (logits, cache)` over a KV cache whose leaves
have the rows (batch x beam) first; the caller has already fed the start token, so they begin
from its logits. Both run as one `lax.while_loop` and stop early once nothing can change. Each
of the first `max_steps - 1` tokens is fed back with one `step_fn` call; the last is chosen
after the loop, with no call whose logits nobody reads, so a cache of `max_steps` positions
(start token included) is never written past its end.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

StepFn = Callable[[Any, jax.Array], tuple[jax.Array, Any]]
NEG = -1.0e9  # a finite "minus infinity" for scores, so score arithmetic never makes NaNs


def greedy_search(
    step_fn: StepFn, cache: Any, first_logits: jax.Array, max_steps: int, eos_id: int, pad_id: int
) -> jax.Array:
    """The argmax token at every step, (rows, max_steps); after a row's EOS it holds `pad_id`."""
    rows = first_logits.shape[0]

    def choose(index, logits, tokens, done):
        token = jnp.where(done, pad_id, jnp.argmax(logits, axis=-1)).astype(jnp.int32)
        return token, tokens.at[:, index].set(token), jnp.logical_or(done, token == eos_id)

    def cond(state):
        index, _, _, _, done = state
        return jnp.logical_and(index < max_steps - 1, ~jnp.all(done))

    def body(state):
        index, logits, cache, tokens, done = state
        token, tokens, done = choose(index, logits, tokens, done)
        logits, cache = step_fn(cache, token)
        return index + 1, logits, cache, tokens, done

    tokens = jnp.full((rows, max_steps), pad_id, jnp.int32)
    start = (jnp.zeros((), jnp.int32), first_logits, cache, tokens, jnp.zeros(rows, bool))
    index, logits, _, tokens, done = jax.lax.while_loop(cond, body, start)
    return choose(index, logits, tokens, done)[1]  # the last token (pad if all are done)


def length_penalty(length: jax.Array, alpha: float) -> jax.Array:
    """GNMT's length normalisation (Wu et al. 2016, eq. 14): ((5 + |Y|) / 6)^alpha."""
    return ((5.0 + length) / 6.0) ** alpha


def beam_search(
    step_fn: StepFn,
    cache: Any,
    first_logits: jax.Array,
    beam_size: int,
    max_steps: int,
    eos_id: int,
    pad_id: int,
    alpha: float = 0.6,
) -> tuple[jax.Array, jax.Array]:
    """The best sequence of each batch row by log P(Y) / length_penalty(|Y|, alpha) (GNMT's
    score without its coverage term), as ((batch, max_steps) tokens, (batch,) scores).

    Rows of `cache` and `first_logits` are batch-major, beam-minor (row b * beam_size + k), the
    beams of a batch row starting identical. Each step extends every live beam by every token,
    keeps the 2k best extensions, moves those among the first k that end in EOS to the
    finished set (the best k kept) and continues the k best that do not end in EOS. The search
    stops when no live beam can still beat the best finished one (log P only falls, and for
    alpha >= 0 the penalty is largest at `max_steps`).
    """
    rows, vocab = first_logits.shape
    k = beam_size
    batch = rows // k
    top = min(2 * k, k * vocab)
    positions = jnp.arange(max_steps)
    best_possible_penalty = length_penalty(jnp.float32(max_steps), alpha)

    def cond(state):
        index, _, _, alive_logp, _, finished_score, _ = state
        bound = alive_logp[:, 0] / best_possible_penalty
        settled = finished_score[:, 0] >= bound  # the best finished one is final
        return jnp.logical_and(index < max_steps - 1, ~jnp.all(settled))

    def choose(state):
        """Extend the live beams by one token: the new finished set, live beams and the rows of
        the cache (and tokens) that continue them."""
        index, logits, _, alive_logp, alive_seq, finished_score, finished_seq = state
        log_probs = jax.nn.log_softmax(logits.astype(jnp.float32)).reshape(batch, k, vocab)
        candidates = (alive_logp[:, :, None] + log_probs).reshape(batch, k * vocab)
        logp, flat = jax.lax.top_k(candidates, top)  # (batch, 2k)
        parent, token = flat // vocab, (flat % vocab).astype(jnp.int32)
        seq = jnp.take_along_axis(alive_seq, parent[:, :, None], axis=1)
        seq = jnp.where(positions == index, token[:, :, None], seq)
        ends = token == eos_id
        # Only an EOS among the k best extensions finishes a hypothesis (as fairseq does), so a
        # beam of 1 is exactly greedy search; EOS further down is dropped.
        finishing = jnp.logical_and(ends, jnp.arange(top) < k)

        score = jnp.where(finishing, logp / length_penalty(index + 1.0, alpha), NEG)
        finished_score, keep = jax.lax.top_k(jnp.concatenate([finished_score, score], 1), k)
        finished_seq = jnp.take_along_axis(
            jnp.concatenate([finished_seq, seq], 1), keep[:, :, None], axis=1
        )

        alive_logp, keep = jax.lax.top_k(jnp.where(ends, NEG, logp), k)
        alive_seq = jnp.take_along_axis(seq, keep[:, :, None], axis=1)
        parent = jnp.take_along_axis(parent, keep, axis=1)
        token = jnp.take_along_axis(token, keep, axis=1).reshape(rows)
        return (alive_logp, alive_seq, finished_score, finished_seq), parent, token

    def body(state):
        index, _, cache = state[:3]
        beams, parent, token = choose(state)
        logits, cache = step_fn(_select_rows(cache, parent, batch, k), token)
        return index + 1, logits, cache, *beams

    first = jnp.where(jnp.arange(k) == 0, 0.0, NEG)  # identical beams: expand only the first
    state = (
        jnp.zeros((), jnp.int32),
        first_logits,
        cache,
        jnp.broadcast_to(first, (batch, k)).astype(jnp.float32),
        jnp.full((batch, k, max_steps), pad_id, jnp.int32),
        jnp.full((batch, k), NEG, jnp.float32),
        jnp.full((batch, k, max_steps), pad_id, jnp.int32),
    )
    state = jax.lax.while_loop(cond, body, state)
    # The last position, without a model step after it. Had the search settled earlier, this
    # extension cannot beat the best finished hypothesis (the bound in `cond`).
    alive_logp, alive_seq, finished_score, finished_seq = choose(state)[0]
    # A row whose beams never finished within max_steps returns its best live beam.
    none_finished = finished_score[:, 0] <= NEG / 2
    tokens = jnp.where(none_finished[:, None], alive_seq[:, 0], finished_seq[:, 0])
    scores = jnp.where(
        none_finished, alive_logp[:, 0] / best_possible_penalty, finished_score[:, 0]
    )
    return tokens, scores


def _select_rows(cache: Any, parent: jax.Array, batch: int, k: int) -> Any:
    """Reorder each cache leaf's rows so row (b, j) continues beam `parent[b, j]` of row b."""

    def select(x: jax.Array) -> jax.Array:
        if x.ndim == 0:  # shared counters (cache index, position)
            return x
        grouped = x.reshape(batch, k, *x.shape[1:])
        chosen = grouped[jnp.arange(batch)[:, None], parent]
        return chosen.reshape(batch * k, *x.shape[1:])

    return jax.tree.map(select, cache)
