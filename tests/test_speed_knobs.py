"""Settings for throughput runs: synthetic tokens (the GPT-2 speed config) and the dtype of
Adam's first moment."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import optax
import pytest
from conftest import REPO, genlab, lm_config

from launch.config import apply_overrides, load_config
from train.errors import UserError
from train.optim import make_optimizer
from train.tasks import build_task
from train.trainer import train

GPT2_CONFIG = REPO / "experiments" / "gpt2_synthetic.py"


def _synthetic(**overrides: str):
    config = load_config(f"{GPT2_CONFIG}:test")
    apply_overrides(config, overrides)
    return config


def test_gpt2_124m_has_gpt2_smalls_parameter_count():
    config = load_config(f"{GPT2_CONFIG}:124m")
    task = build_task(config)
    shapes = jax.eval_shape(task.init_state, jax.random.key(0)).params
    count = sum(math.prod(x.value.shape) for x in jax.tree.leaves(
        shapes, is_leaf=lambda x: hasattr(x, "value")))  # fmt: skip
    # GPT-2 small without biases, vocabulary padded to 50,304: 124.4M (nanoGPT: 124M).
    assert count == 124_373_760


def test_synthetic_tokens_train_without_text_or_tokenizer(tmp_path):
    metrics = train(_synthetic(), tmp_path)
    assert abs(metrics["train/loss"] - math.log(96)) < 0.5  # random tokens: about log(vocab)
    assert metrics["perf/tokens_per_s"] > 0
    assert not (tmp_path / "tokenizer.json").exists()
    batch = build_task(_synthetic()).train_batch(3)
    assert (
        batch["inputs"].shape == (8, 32)
        and 0 <= batch["inputs"].min() <= batch["inputs"].max() < 96
    )


def test_synthetic_tokens_need_a_vocabulary_and_cannot_be_sampled(tmp_path):
    with pytest.raises(UserError, match=r"data.vocab_size=0: data.source=synthetic needs"):
        build_task(_synthetic(**{"data.vocab_size": "0"}))
    with pytest.raises(UserError, match=r"data.source='words' is not allowed"):
        build_task(_synthetic(**{"data.source": "words"}))
    workdir = tmp_path / "run"
    genlab("train", "--config", f"{GPT2_CONFIG}:test", "--workdir", str(workdir), check=True)
    result = genlab("sample", "--workdir", str(workdir), "--prompt", "a")
    assert result.returncode == 2
    assert "data.source=synthetic run has no tokenizer" in result.stderr
    assert "Traceback" not in result.stderr


def test_first_moment_dtype_is_a_setting():
    params = {"w": jnp.ones((3, 4)), "b": jnp.ones((4,))}
    config = lm_config(**{"optim.mu_dtype": "bfloat16"}).optim
    state = make_optimizer(config).init(params)
    mu, nu = optax.tree_utils.tree_get(state, "mu"), optax.tree_utils.tree_get(state, "nu")
    assert mu["w"].dtype == jnp.bfloat16 and nu["w"].dtype == jnp.float32
    default = make_optimizer(lm_config().optim).init(params)
    assert optax.tree_utils.tree_get(default, "mu")["w"].dtype == jnp.float32
    with pytest.raises(UserError, match=r"optim.mu_dtype='float16' is not allowed"):
        make_optimizer(lm_config(**{"optim.mu_dtype": "float16"}).optim)
