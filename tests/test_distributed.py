"""Multi-process training through jax.distributed: 2 processes x 4 CPU devices behave like one
process with 8 devices, and resume from the checkpoint they wrote together."""

from __future__ import annotations

import numpy as np
from conftest import genlab, train_args

from train.logging import read_metrics

FOUR_DEVICES = {"XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
STEPS = (
    "--config.train.log_every=1",
    "--config.train.checkpoint_every=4",
    "--config.train.eval_every=4",
)


def _losses(workdir) -> dict[int, float]:
    return {r["step"]: r["train/loss"] for r in read_metrics(workdir) if "train/loss" in r}


def test_two_processes_match_one_process_and_resume(tmp_path):
    genlab(*train_args(tmp_path / "single", *STEPS, "--config.train.steps=8"), check=True)

    multi = tmp_path / "multi"
    genlab(
        *train_args(multi, *STEPS, "--config.train.steps=4"),
        "--num_processes",
        "2",
        env=FOUR_DEVICES,
        check=True,
    )
    assert (multi / "checkpoints" / "4").is_dir()
    resumed = genlab(
        *train_args(multi, *STEPS, "--config.train.steps=8"),
        "--num_processes",
        "2",
        env=FOUR_DEVICES,
        check=True,
    )
    assert resumed.stdout.count("resumed from the checkpoint of step 4") == 1  # process 0 only

    single, both = _losses(tmp_path / "single"), _losses(multi)
    assert sorted(both) == list(range(1, 9))
    np.testing.assert_allclose(
        [both[s] for s in range(1, 9)], [single[s] for s in range(1, 9)], atol=1e-5, rtol=0
    )


def test_unreachable_coordinator_gives_up_after_its_timeout_with_one_line(tmp_path):
    result = genlab(
        *train_args(tmp_path / "w"),
        "--coordinator",
        "127.0.0.1:9",
        "--process_count",
        "2",
        "--process_id",
        "1",
        "--distributed_timeout",
        "2",
        env=FOUR_DEVICES,
    )
    assert result.returncode == 2  # rather than waiting for the helper's hang timeout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "127.0.0.1:9: unreachable after 2s" in lines[0]
