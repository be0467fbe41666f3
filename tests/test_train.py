"""The trainer end to end, in process: learning, sharding equivalence, accumulation, errors."""

from __future__ import annotations

import math
import re

import jax
import numpy as np
import pytest
from conftest import genlab, lm_config

from train.checkpoint import Checkpoints
from train.errors import UserError
from train.logging import read_metrics
from train.trainer import train


def _losses(workdir) -> list[float]:
    return [r["train/loss"] for r in read_metrics(workdir) if "train/loss" in r]


def _quiet(**overrides: str) -> dict[str, str]:
    return {
        "train.log_every": "1",
        "train.eval_every": "1000",
        "train.checkpoint_every": "1000",
        **overrides,
    }


def test_loss_falls_on_tiny_shakespeare(tmp_path):
    config = lm_config(
        **{
            "train.steps": "150",
            "optim.lr": "1e-2",
            "optim.decay_steps": "150",
            "train.eval_every": "150",
            "model.tie_embeddings": "false",
            "mesh.data": "1",
            "train.log_every": "1",
        }
    )
    metrics = train(config, tmp_path, devices=jax.devices()[:1])
    losses = _losses(tmp_path)
    assert losses[0] > 4.0  # about ln(65) = 4.17 at the start
    assert metrics["eval/loss"] < 2.85 and losses[-1] < losses[0] - 1.3
    assert math.isclose(metrics["eval/ppl"], math.exp(metrics["eval/loss"]), rel_tol=1e-6)
    assert math.isclose(metrics["eval/bpc"], metrics["eval/loss"] / math.log(2), rel_tol=1e-6)
    assert (tmp_path / "tb").is_dir() and list((tmp_path / "samples").glob("*.txt"))


@pytest.mark.parametrize(
    "mesh",
    [
        {"mesh.data": "8"},  # data-parallel
        {"mesh.data": "1", "mesh.fsdp": "8"},  # fully sharded
        {"mesh.data": "4", "mesh.tensor": "2"},  # tensor-parallel (+ data)
        {"mesh.data": "2", "mesh.fsdp": "2", "mesh.tensor": "2"},
    ],
    ids=["dp", "fsdp", "tp", "dp-fsdp-tp"],
)
def test_sharded_meshes_match_one_device(tmp_path, mesh):
    steps = {"train.steps": "6"}
    one = lm_config(**_quiet(**steps, **{"mesh.data": "1"}))
    train(one, tmp_path / "one", devices=jax.devices()[:1])
    many = lm_config(**_quiet(**steps, **mesh))
    train(many, tmp_path / "many")
    assert len(jax.devices()) == 8
    np.testing.assert_allclose(
        _losses(tmp_path / "many"), _losses(tmp_path / "one"), atol=1e-5, rtol=0
    )


def test_gradient_accumulation_matches_one_big_batch(tmp_path):
    base = _quiet(**{"train.steps": "4", "mesh.data": "1"})
    devices = jax.devices()[:1]
    train(lm_config(**base), tmp_path / "whole", devices=devices)
    train(lm_config(**base, **{"train.grad_accum": "4"}), tmp_path / "micro", devices=devices)
    np.testing.assert_allclose(
        _losses(tmp_path / "micro"), _losses(tmp_path / "whole"), atol=1e-5, rtol=0
    )


def test_resume_onto_a_different_mesh(tmp_path):
    first = lm_config(
        **_quiet(**{"train.steps": "4", "train.checkpoint_every": "4", "mesh.data": "8"})
    )
    train(first, tmp_path / "run")
    second = lm_config(
        **_quiet(**{"train.steps": "8", "mesh.data": "2", "mesh.fsdp": "2", "mesh.tensor": "2"})
    )
    train(second, tmp_path / "run")
    reference = lm_config(**_quiet(**{"train.steps": "8", "mesh.data": "8"}))
    train(reference, tmp_path / "reference")
    resumed = [r["train/loss"] for r in read_metrics(tmp_path / "run") if r["step"] > 4]
    expected = [r["train/loss"] for r in read_metrics(tmp_path / "reference") if r["step"] > 4]
    np.testing.assert_allclose(resumed, expected, atol=1e-5, rtol=0)


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    good = lm_config(**_quiet(**{"train.steps": "5", "train.checkpoint_every": "5"}))
    train(good, tmp_path)
    exploding = lm_config(
        **_quiet(
            **{
                "train.steps": "40",
                "train.checkpoint_every": "2",
                "optim.lr": "1e30",
                "optim.warmup_steps": "0",
            }
        )
    )
    with pytest.raises(UserError, match=r"non-finite train/loss=\w+ at step \d+") as caught:
        train(exploding, tmp_path)
    bad_step, good_step = map(int, re.findall(r"step (\d+)", str(caught.value)))
    steps = Checkpoints(tmp_path, read_only=True).all_steps()
    assert 5 <= max(steps) == good_step < bad_step
    assert max(r["step"] for r in read_metrics(tmp_path)) < bad_step  # nothing logged past it


def test_eval_and_sample_commands(trained_lm):
    result = genlab("eval", "--workdir", str(trained_lm), check=True)
    assert '"eval/loss"' in result.stdout and '"step": 40' in result.stdout
    result = genlab(
        "sample",
        "--workdir",
        str(trained_lm),
        "--prompt",
        "ROMEO:",
        "--num_tokens",
        "100",
        check=True,
    )
    text = result.stdout.rstrip("\n")
    assert text.startswith("ROMEO:") and len(text) == len("ROMEO:") + 100
