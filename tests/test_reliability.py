"""What the README promises about bad input and a run's folder: one line and exit 2 for every bad
value (a catalogue), a failed start that changes nothing, one training process per workdir, a
corrupt newest checkpoint skipped, and the CPU split whatever was imported first."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import LM_CONFIG, REPO, SHAKESPEARE, genlab, lm_config, train_args

from launch.cli import main, unescape
from launch.cpu_devices import cpu_device_count
from train.workdir import LOCK_FILE, WorkdirLock


def _one_line_error(capsys, argv: list[str]) -> str:
    """Run `genlab ARGV` in this process; its error line (exit code 2 asserted)."""
    with pytest.raises(SystemExit) as stopped:
        main(argv)
    err = capsys.readouterr().err.strip()
    assert stopped.value.code == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


TRAIN = ["train", "--config", f"{LM_CONFIG}:test", f"--config.data.path={SHAKESPEARE}"]

# (extra arguments to `genlab train --config <the LM test config>`, words the message must hold)
BAD_TRAIN_SETTINGS = [
    ("--config.train.eval_every=0", "train.eval_every=0 is not allowed; allowed: >= 1"),
    ("--config.train.checkpoint_every=0", "train.checkpoint_every=0 is not allowed"),
    ("--config.train.batch_size=-4", "train.batch_size=-4 is not allowed; allowed: >= 1"),
    ("--config.train.batch_size=0", "train.batch_size=0 is not allowed"),
    ("--config.train.steps=0", "train.steps=0 is not allowed"),
    ("--config.train.steps=-5", "train.steps=-5 is not allowed"),
    ("--config.train.keep_checkpoints=0", "train.keep_checkpoints=0 is not allowed"),
    ("--config.model.num_layers=0", "model.num_layers=0 is not allowed; allowed: >= 1"),
    ("--config.optim.lr=-0.001", "optim.lr=-0.001 is not allowed; allowed: > 0"),
    ("--config.optim.b2=1.0", "optim.b2=1.0 is not allowed; allowed: in [0, 1)"),
    ("--config.model.dropout=1.5", "model.dropout=1.5 is not allowed; allowed: in [0, 1)"),
    ("--config.sample.top_p=0.0", "sample.top_p=0.0 is not allowed; allowed: in (0, 1]"),
    ("--config.sample.top_k=-2", "sample.top_k=-2 is not allowed"),
    ("--config.data.val_fraction=1.0", "data.val_fraction=1.0 is not allowed"),
    ("--config.mesh.cpu_devices=0", "-1 (one per core) or a positive count"),
    ("--config.model.attention_impl=flash", "allowed: one of 'auto', 'xla', 'cudnn'"),
    ("--config.model.remat=some", "model.remat='some' is not allowed"),
    ("--config.optim.mu_dtype=float16", "optim.mu_dtype='float16' is not allowed"),
]


@pytest.mark.parametrize(("argument", "words"), BAD_TRAIN_SETTINGS)
def test_bad_settings_are_one_line_errors(capsys, tmp_path, argument, words):
    err = _one_line_error(capsys, [*TRAIN, "--workdir", str(tmp_path / "run"), argument])
    assert words in err
    assert not (tmp_path / "run").exists()  # refused before anything was written


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["sweep", "s.py", "--parallel", "0"], "--parallel=0 is not allowed; allowed: >= 1"),
        (["train", "--workdir", "w", "--num_processes", "-1"], "--num_processes=-1"),
        (["eval", "--workdir", "w", "--step", "-3"], "--step=-3 is not allowed"),
        (["sample", "--workdir", "w", "--num_tokens", "0"], "--num_tokens=0 is not allowed"),
        (["eval", "--workdir", "w", "--metric", "blue"], "--metric=blue: unknown evaluator"),
        (["eval", "--workdir", "w", "--num_samples", "9"], "--num_samples is a setting of"),
    ],
)
def test_bad_flags_are_one_line_errors(capsys, argv, words):
    assert words in _one_line_error(capsys, argv)


def test_bad_files_and_folders_are_one_line_errors(capsys, tmp_path):
    config = tmp_path / "broken.py"
    config.write_text("def get_config(variant):\n    return (\n")
    err = _one_line_error(capsys, ["train", "--config", str(config), "--workdir", "w"])
    assert f"{config} line 2" in err
    sweep = tmp_path / "sweep.py"
    sweep.write_text("def get_sweep(:\n")
    assert f"{sweep} line 1" in _one_line_error(capsys, ["sweep", str(sweep), "--dry-run"])
    folder = tmp_path / "a_file"
    folder.write_text("not a folder")
    err = _one_line_error(capsys, [*TRAIN, "--workdir", str(folder)])
    assert f"--workdir {folder} is a file" in err
    binary = tmp_path / "data.bin"
    binary.write_bytes(bytes(range(256)) * 8)
    argv = ["train", "--config", f"{LM_CONFIG}:test", "--workdir", str(tmp_path / "b")]
    err = _one_line_error(capsys, [*argv, f"--config.data.path={binary}"])
    assert "is not UTF-8 text" in err


def test_bad_eval_and_sample_flags_are_one_line_errors(capsys, trained_lm):
    workdir = str(trained_lm)
    err = _one_line_error(capsys, ["eval", "--workdir", workdir, "--config.model.emb_dim=64"])
    assert "--config.model.emb_dim: a trained run's task and model cannot be changed" in err
    err = _one_line_error(capsys, ["sample", "--workdir", workdir, "--top_k", "-1"])
    assert "--top_k=-1: must be >= 0" in err
    err = _one_line_error(capsys, ["sample", "--workdir", workdir, "--top_k", "1000"])
    assert "--top_k=1000: the vocabulary has 65 tokens" in err


def test_prompts_keep_every_character_and_only_simple_escapes_are_read():
    assert unescape("A man at the café.") == "A man at the café."
    assert unescape(r"one\ntwo\tthree \\ four") == "one\ntwo\tthree \\ four"
    assert unescape("a stray \\ and \\q and an end \\") == "a stray \\ and \\q and an end \\"


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def test_a_failed_start_leaves_the_workdir_byte_for_byte_unchanged(trained_lm):
    before = _snapshot(trained_lm)
    wider = genlab(*train_args(trained_lm, "--config.model.emb_dim=64"))
    assert wider.returncode == 2, wider.stderr
    assert "holds a run with other task/model settings: model.emb_dim=64 (the run has 32)" in (
        wider.stderr
    )
    other_family = genlab(
        "train", "--config", f"{REPO}/experiments/vae_mnist.py:test", "--workdir", str(trained_lm)
    )
    assert other_family.returncode == 2, other_family.stderr
    assert "Traceback" not in wider.stderr + other_family.stderr
    assert _snapshot(trained_lm) == before


def test_a_live_workdir_refuses_a_second_run_and_a_killed_holder_blocks_nothing(tmp_path):
    workdir = tmp_path / "run"
    workdir.mkdir()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                f"""
                import sys, time
                from train.workdir import WorkdirLock
                WorkdirLock({str(workdir)!r}).acquire()
                print("locked", flush=True)
                time.sleep(600)
                """
            ),
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        second = genlab(*train_args(workdir))
        assert second.returncode == 2, second.stderr
        assert f"--workdir {workdir} is in use by process {holder.pid}" in second.stderr
        assert not (workdir / "config.json").exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert (workdir / LOCK_FILE).exists()  # a killed holder leaves its note, but not its lock
    lock = WorkdirLock(workdir).acquire()
    lock.release()
    assert not (workdir / LOCK_FILE).exists()


def _truncate_newest(workdir: Path, step: int) -> None:
    files = [p for p in (workdir / "checkpoints" / str(step)).rglob("*") if p.is_file()]
    largest = max(files, key=lambda p: p.stat().st_size)
    largest.write_bytes(b"")


def test_an_unreadable_newest_checkpoint_falls_back_to_the_previous_one(tmp_path):
    run = ["--config.train.steps=20", "--config.train.checkpoint_every=10"]
    genlab(*train_args(tmp_path, *run), check=True)
    _truncate_newest(tmp_path, 20)
    evaluated = genlab("eval", "--workdir", str(tmp_path))
    assert evaluated.returncode == 0, evaluated.stderr
    assert json.loads(evaluated.stdout.splitlines()[-1])["step"] == 10
    assert "checkpoint step 20 is unreadable" in evaluated.stderr
    explicit = genlab("eval", "--workdir", str(tmp_path), "--step", "20")
    assert explicit.returncode == 2 and "checkpoint step 20" in explicit.stderr
    resumed = genlab(*train_args(tmp_path, *run))
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from the checkpoint of step 10" in resumed.stderr + resumed.stdout
    assert (tmp_path / "corrupt_checkpoints" / "20").is_dir()  # set aside, not deleted
    assert (tmp_path / "checkpoints" / "20").is_dir()  # and saved again by the resumed run


def test_the_quickstart_gets_one_xla_device_per_core(tmp_path):
    """No device count in XLA_FLAGS (as for a user): the CLI splits the CPU although the
    experiment file imports jax-using modules first."""
    result = genlab(
        *train_args(tmp_path, "--config.train.steps=2"),
        env={"XLA_FLAGS": "", "JAX_PLATFORMS": "cpu"},
    )
    assert result.returncode == 0, result.stderr
    cores = len(os.sched_getaffinity(0))
    expected = cpu_device_count(lm_config(), cores)
    assert json.loads((tmp_path / "metadata.json").read_text())["device_count"] == expected
    assert "could be split" not in result.stderr


def test_a_full_disk_stops_before_a_checkpoint_with_one_line(capsys, tmp_path, monkeypatch):
    import shutil

    import train.workdir

    nearly_full = shutil._ntuple_diskusage(total=10**9, used=10**9 - 4096, free=4096)
    monkeypatch.setattr(train.workdir.shutil, "disk_usage", lambda path: nearly_full)
    workdir = tmp_path / "run"
    err = _one_line_error(capsys, [*TRAIN, "--workdir", str(workdir), "--config.train.steps=12"])
    assert "checkpoint step 10 needs about" in err and "MiB are free" in err
    assert not any((workdir / "checkpoints").iterdir())  # nothing half-written
