"""The SSM and LSTM LMs learn Tiny Shakespeare, sample from their recurrent state, and resume
bit for bit, dropout included."""

from __future__ import annotations

import shutil

import jax
import pytest
from conftest import assert_checkpoints_equal, lm_variant_config

from train.logging import read_metrics
from train.trainer import train


@pytest.mark.parametrize("variant", ["ssm_test", "lstm_test"])
def test_loss_falls_and_a_resumed_run_matches_the_uninterrupted_one_bitwise(variant, tmp_path):
    config = lm_variant_config(
        variant,
        **{"optim.lr": "1e-2", "optim.decay_steps": "80", "model.dropout": "0.1"},
        **{"train.steps": "80", "train.checkpoint_every": "40", "train.eval_every": "80"},
    )
    one = jax.devices()[:1]
    metrics = train(config, tmp_path / "straight", devices=one)
    losses = [r["train/loss"] for r in read_metrics(tmp_path / "straight") if "train/loss" in r]
    assert len(losses) == 8  # means over windows of 10 steps
    assert losses[0] > 3.5  # steps 1-10 start near ln(65) = 4.17
    assert losses[-1] < losses[0] - 0.7 and metrics["eval/loss"] < 3.05
    text = (tmp_path / "straight" / "samples" / "step_0000080.txt").read_text()
    assert len(text) == config.sample.num_tokens  # sampled from the recurrent state

    shutil.copytree(tmp_path / "straight", tmp_path / "resumed")
    shutil.rmtree(tmp_path / "resumed" / "checkpoints" / "80")  # as if killed after step 40
    train(config, tmp_path / "resumed", devices=one)
    assert_checkpoints_equal(tmp_path / "straight", tmp_path / "resumed", 80)
