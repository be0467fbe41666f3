"""The LSTM LM: carried-state steps = full pass, causality, recurrent generation, sharding (its
training and exact resume: test_recurrent_training.py)."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from conftest import assert_close, run_in_pieces

from models.rnn import LSTMLM
from train import partitioning
from train.tasks.lm.sampling import generate_ids_recurrent


def _model(**overrides) -> LSTMLM:
    return LSTMLM(vocab_size=13, num_layers=2, emb_dim=16, **overrides)


def _init(model: LSTMLM, tokens: jax.Array):
    return jax.jit(model.init)(jax.random.key(1), tokens)["params"]


def test_steps_with_carried_state_match_the_full_forward_pass():
    model = _model(tie_embeddings=False)
    tokens = jax.random.randint(jax.random.key(0), (3, 16), 0, 13)
    params = nn.meta.unbox(_init(model, tokens))
    full = jax.jit(model.apply)({"params": params}, tokens)
    assert_close(run_in_pieces(model, params, tokens, list(range(5, 16))), full)  # prompt of 5


def test_future_tokens_change_no_earlier_output():
    model = _model()
    tokens = jax.random.randint(jax.random.key(0), (2, 16), 0, 13)
    params = nn.meta.unbox(_init(model, tokens))
    changed = tokens.at[:, 10:].set((tokens[:, 10:] + 1) % 13)
    apply = jax.jit(model.apply)
    a, b = apply({"params": params}, tokens), apply({"params": params}, changed)
    np.testing.assert_allclose(a[:, :10], b[:, :10], atol=1e-6)
    assert not np.allclose(a[:, 10:], b[:, 10:])

    prompt = np.asarray([3, 1, 4, 1, 5])  # greedy generation follows the full pass, too
    new = generate_ids_recurrent(model, params, prompt, 12, jax.random.key(0), 0.0, 0, 1.0)
    logits = apply({"params": params}, jnp.asarray([[*prompt, *new]]))
    assert len(new) == 12 and list(np.asarray(jnp.argmax(logits[0, 4:-1], axis=-1))) == new


def test_parameters_carry_logical_axis_names_that_shard():
    boxed = _init(_model(), jnp.zeros((1, 8), jnp.int32))
    boxes = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))
    assert boxes and all(isinstance(b, nn.Partitioned) for b in boxes)
    sizes = ml_collections.ConfigDict({"data": 1, "fsdp": 2, "tensor": 2})
    mesh = partitioning.make_mesh(sizes, jax.devices()[:4])
    shardings = partitioning.logical_shardings(boxed, mesh)
    cell = shardings["lstm_0"]["cell"]
    assert tuple(cell["ii"]["kernel"].spec) == ("fsdp", "tensor")  # inputs x gates
    assert tuple(cell["hi"]["kernel"].spec) == (None, "tensor")
