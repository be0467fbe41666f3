"""The selective SSM: parallel scan = recurrence, causality, recurrent decoding, bfloat16, weight
decay and sharding (its training and exact resume: test_recurrent_training.py)."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from conftest import assert_close, lm_variant_config, run_in_pieces

from models.ssm import SSMLM, SelectiveSSM, selective_scan, selective_step
from train import partitioning
from train.errors import UserError
from train.optim import make_optimizer
from train.tasks.lm.sampling import generate_ids_recurrent


def _model(**overrides) -> SSMLM:
    return SSMLM(vocab_size=13, num_layers=2, emb_dim=16, state_dim=4, **overrides)


def _params(model: nn.Module, *args):
    init = jax.jit(lambda *a: nn.meta.unbox(model.init(jax.random.key(1), *a)["params"]))
    return init(*args)


def _apply(model: nn.Module, params, *args):
    return jax.jit(model.apply)({"params": params}, *args)


def test_parallel_scan_equals_step_by_step_recurrence():
    a, b, c = jax.random.split(jax.random.key(0), 3)
    decay = jax.random.uniform(a, (40, 2, 3, 4), minval=0.5, maxval=1.0)  # time-major
    drive = jax.random.normal(b, (40, 2, 3, 4))
    initial = jax.random.normal(c, (2, 3, 4))
    parallel = jax.jit(selective_scan)(decay, drive, initial)

    def one(state, inputs):
        state = selective_step(state, *inputs)
        return state, state

    _, states = jax.lax.scan(one, initial, (decay, drive))
    assert_close(parallel, states)


def test_ssm_block_recurrent_steps_match_the_parallel_pass():
    # Large step sizes, so the state (not just the D skip) carries much of the output.
    block = SelectiveSSM(state_dim=4, dt_min=0.1, dt_max=1.0)
    x = jax.random.normal(jax.random.key(0), (2, 12, 8))
    params = _params(block, x)
    full = _apply(block, params, x)
    assert_close(run_in_pieces(block, params, x, list(range(1, 12))), full)  # one at a time
    without_state = _apply(block, params, x[:, 6:])  # the state really matters
    assert float(jnp.abs(without_state - full[:, 6:]).max()) > 0.05 * float(jnp.abs(full).max())


def test_prompt_then_steps_match_the_full_forward_pass():
    model = _model(tie_embeddings=False)
    tokens = jax.random.randint(jax.random.key(0), (3, 16), 0, 13)
    params = _params(model, tokens)
    full = _apply(model, params, tokens)
    assert_close(run_in_pieces(model, params, tokens, list(range(5, 16))), full)  # prompt of 5


def test_future_tokens_change_no_earlier_output():
    model = _model()
    tokens = jax.random.randint(jax.random.key(0), (2, 16), 0, 13)
    params = _params(model, tokens)
    changed = tokens.at[:, 10:].set((tokens[:, 10:] + 1) % 13)
    a, b = _apply(model, params, tokens), _apply(model, params, changed)
    np.testing.assert_allclose(a[:, :10], b[:, :10], atol=1e-6)
    assert not np.allclose(a[:, 10:], b[:, 10:])


def test_greedy_recurrent_generation_follows_the_full_forward_pass():
    model = _model()
    prompt = np.asarray([3, 1, 4, 1, 5])
    params = _params(model, jnp.zeros((1, 8), jnp.int32))
    new = generate_ids_recurrent(model, params, prompt, 12, jax.random.key(0), 0.0, 0, 1.0)
    sequence = jnp.asarray([[*prompt, *new]])
    logits = _apply(model, params, sequence)
    expected = np.asarray(jnp.argmax(logits[0, len(prompt) - 1 : -1], axis=-1))
    assert len(new) == 12 and list(expected) == new


def test_every_parameter_has_logical_axis_names():
    model = _model(tie_embeddings=False)
    variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))
    boxes = jax.tree.leaves(variables["params"], is_leaf=lambda x: isinstance(x, nn.Partitioned))
    assert boxes and all(isinstance(b, nn.Partitioned) for b in boxes)
    assert all(len(b.names) == b.value.ndim for b in boxes)
    a_log = variables["params"]["block_0"]["ssm"]["a_log"].value
    np.testing.assert_allclose(jnp.exp(a_log[0]), jnp.arange(1, 5))  # S4D-real: A_n = -(n + 1)


def test_bfloat16_compute_keeps_close_logits():
    tokens = jax.random.randint(jax.random.key(0), (2, 16), 0, 13)
    model = _model()
    params = _params(model, tokens)
    full = _apply(model, params, tokens)
    half = _apply(model.clone(dtype=jnp.bfloat16), params, tokens)
    assert half.dtype == jnp.bfloat16  # the loss upcasts inside its reductions
    half = np.asarray(half, np.float32)
    np.testing.assert_allclose(half, full, atol=0.05 * float(jnp.abs(full).max()))
    assert not np.array_equal(half, full)  # bfloat16 really was used


def test_weight_decay_skips_what_optim_no_decay_names():
    """Mamba keeps A (a_log, a matrix) and D out of weight decay; the ssm variants say so."""
    config = lm_variant_config("ssm_test")
    assert config.optim.no_decay
    params = _params(_model(), jnp.zeros((1, 8), jnp.int32))
    optim = ml_collections.ConfigDict(config.optim.to_dict())
    optim.update(weight_decay=0.5, clip_norm=0.0, schedule="constant", lr=0.1)
    tx = make_optimizer(optim)
    zero = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(zero, tx.init(params), params)  # only decay moves anything
    ssm = updates["block_0"]["ssm"]
    assert not np.any(ssm["a_log"]) and not np.any(ssm["d_skip"])
    np.testing.assert_allclose(ssm["x_kernel"], -0.1 * 0.5 * params["block_0"]["ssm"]["x_kernel"])
    optim.no_decay = "^nothing$"
    with pytest.raises(UserError, match=r"optim\.no_decay='\^nothing\$' matches no parameter"):
        make_optimizer(optim).init(params)


def test_inner_width_shards_over_tensor_and_embed_over_fsdp():
    boxed = jax.jit(_model().init)(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"]
    sizes = ml_collections.ConfigDict({"data": 1, "fsdp": 2, "tensor": 2})
    mesh = partitioning.make_mesh(sizes, jax.devices()[:4])
    ssm = partitioning.logical_shardings(boxed, mesh)["block_0"]["ssm"]
    assert tuple(ssm["in_kernel"].spec) == ("fsdp", None, "tensor")  # (embed, x|gate, inner)
    assert tuple(ssm["out_kernel"].spec) == ("tensor", "fsdp")
    assert tuple(ssm["a_log"].spec) == ("tensor", None)
    assert tuple(ssm["conv_kernel"].spec) == (None, "tensor")
