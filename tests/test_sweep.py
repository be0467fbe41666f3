"""Sweeps (expansion, naming, manifests, skip/resume, SLURM parameters) and `genlab compare`."""

from __future__ import annotations

import csv
import json
import os
import shutil
import textwrap

import pytest
from conftest import LM_CONFIG, REPO, SHAKESPEARE, genlab

from launch import backends, sweep
from launch.sweep import grid, loguniform, random_search, uniform, zipped
from train.errors import UserError

ONE_DEVICE = {"XLA_FLAGS": "--xla_force_host_platform_device_count=1"}


def _sweep_file(tmp_path, axis: str, name: str = "mysweep") -> str:
    """A sweep file (plain data, as in experiments/sweeps/) with one axis over the tiny LM."""
    path = tmp_path / f"{name}.py"
    path.write_text(
        textwrap.dedent(f"""
        def get_sweep():
            return {{"base": "{LM_CONFIG}:test",
                     "overrides": {{"data.path": "{SHAKESPEARE}", "train.steps": 20,
                                   "train.eval_every": 10, "train.checkpoint_every": 10}},
                     "axes": [{axis}]}}
    """)
    )
    return str(path)


def test_axes_expand_as_grid_zip_and_seeded_random():
    assert len(grid({"a": [1, 2], "b": [3, 4, 5]})) == 6
    assert zipped({"a": [1, 2], "b": [3, 4]}) == [{"a": 1, "b": 3}, {"a": 2, "b": 4}]
    with pytest.raises(UserError, match="equal length"):
        zipped({"a": [1, 2], "b": [3]})
    draws = random_search({"lr": loguniform(1e-4, 1e-2)}, count=5, seed=3)
    assert draws == random_search({"lr": loguniform(1e-4, 1e-2)}, count=5, seed=3)
    assert len({d["lr"] for d in draws}) == 5 and all(1e-4 <= d["lr"] <= 1e-2 for d in draws)


def test_runs_get_readable_unique_workdirs_and_validated_overrides(tmp_path):
    definition = sweep.parse_sweep(
        {
            "base": f"{LM_CONFIG}:test",
            "axes": [
                {"grid": {"optim.lr": [0.001, 0.003]}},
                {"zip": {"model.emb_dim": [32, 64], "model.mlp_dim": [64, 128]}},
            ],
        },
        "test",
    )
    runs = sweep.expand(definition, tmp_path / "s.py", tmp_path / "root")
    names = [r.name for r in runs]
    assert len(runs) == 4 and len(set(names)) == 4
    assert "optim.lr=0.001,model.emb_dim=32,model.mlp_dim=64" in names
    assert all(r.command[:3] == [runs[0].command[0], "-m", "launch.cli"] for r in runs)
    assert "--config.optim.lr=0.003" in runs[-1].command
    bad = sweep.parse_sweep(
        {"base": f"{LM_CONFIG}:test", "axes": [{"grid": {"optim.learning_rate": [1e-3]}}]}, "test"
    )
    with pytest.raises(UserError, match="unknown key 'learning_rate'"):
        sweep.expand(bad, tmp_path / "s.py", tmp_path / "root")


def test_shipped_sweep_files_are_data_with_the_same_runs_and_draws():
    lr_width = sweep.load_sweep(str(REPO / "experiments/sweeps/shakespeare_lr_width.py"))
    assert lr_width.axes == [grid({"optim.lr": [1e-3, 3e-3], "model.emb_dim": [32, 64]})]
    assert lr_width.slurm["timeout_min"] == 30 and lr_width.overrides["data.path"].endswith(".txt")
    random_lr = sweep.load_sweep(str(REPO / "experiments/sweeps/shakespeare_random_lr.py"))
    samplers = {"optim.lr": loguniform(3e-4, 3e-3), "model.dropout": uniform(0, 0.2)}
    assert random_lr.axes == [random_search(samplers, count=6, seed=0)]
    assert random_lr.axes[0][0] == {"optim.lr": 0.002097, "model.dropout": 0.1516}


BASE = f"{LM_CONFIG}:test"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ("not a dict", "get_sweep() must return a dict with keys base, axes, overrides, slurm"),
        ({"base": BASE, "axes": [], "runs": 3}, "unknown key 'runs'; allowed: base, axes,"),
        ({"axes": []}, "missing key 'base'"),
        ({"base": 3, "axes": []}, "base needs 'experiments/NAME.py[:variant]', got 3"),
        ({"base": BASE, "axes": {"grid": {}}}, "axes needs a list of axes"),
        ({"base": BASE, "axes": [{"grdi": {"a": [1]}}]}, "axes[0]: unknown axis kind 'grdi'"),
        ({"base": BASE, "axes": [["a"]]}, "an axis is a dict with one of grid, zip, random"),
        ({"base": BASE, "axes": [{"grid": {"a": [1]}, "zip": {"b": [2]}}]}, "exactly one of"),
        ({"base": BASE, "axes": [{"grid": {"a": [1]}, "count": 2}]}, "unknown key 'count' in a"),
        ({"base": BASE, "axes": [{"grid": {"a": 1}}]}, "axes[0].grid: a needs a list of values"),
        ({"base": BASE, "axes": [{"grid": {"a": [print]}}]}, "a needs a list of values"),
        ({"base": BASE, "axes": [{"zip": {"a": [1, 2], "b": [3]}}]}, "axes[0].zip: zip axes need"),
        (
            {"base": BASE, "axes": [{"random": {"a": {"normal": [0, 1]}}, "count": 2}]},
            "unknown sampler 'normal'; allowed: uniform, loguniform, choice, randint",
        ),
        ({"base": BASE, "axes": [{"random": {"a": [1, 2]}, "count": 2}]}, "a sampler is a one-key"),
        (
            {"base": BASE, "axes": [{"random": {"a": {"loguniform": [0, 1]}}, "count": 2}]},
            "loguniform needs 0 < low <= high, got [0, 1]",
        ),
        (
            {"base": BASE, "axes": [{"random": {"a": {"randint": [1, 2.5]}}, "count": 2}]},
            "randint needs [low, high], two integers",
        ),
        (
            {"base": BASE, "axes": [{"random": {"a": {"choice": []}}, "count": 2}]},
            "choice needs a non-empty list",
        ),
        (
            {"base": BASE, "axes": [{"random": {"a": {"uniform": [0, 1]}}}]},
            "count needs a positive integer, got None",
        ),
        (
            {
                "base": BASE,
                "axes": [{"random": {"a": {"uniform": [0, 1]}}, "count": 2, "seed": "x"}],
            },
            "seed needs an integer, got 'x'",
        ),
        ({"base": BASE, "axes": [], "overrides": {"a": {1, 2}}}, "overrides: a={1, 2} is not"),
        ({"base": BASE, "axes": [], "slurm": ["nodes"]}, "slurm: expected a dict of resources"),
    ],
)
def test_bad_sweep_data_is_a_one_line_user_error(data, message):
    with pytest.raises(UserError) as error:
        sweep.parse_sweep(data, "sweep s.py")
    assert message in str(error.value) and "\n" not in str(error.value)


def test_dry_run_prints_commands_and_runs_nothing(tmp_path):
    file = _sweep_file(tmp_path, '{"grid": {"optim.lr": [1e-3, 3e-3]}}')
    result = genlab("sweep", file, "--dry-run", "--root", str(tmp_path / "root"), check=True)
    assert "2 runs" in result.stdout and "--config.optim.lr=0.003" in result.stdout
    assert not (tmp_path / "root").exists()


def test_sweep_errors_are_one_line(tmp_path):
    cases = [
        (_sweep_file(tmp_path, '{"grid": {"optim.nope": [1]}}', "bad_key"), "unknown key 'nope'"),
        (_sweep_file(tmp_path, '{"grid": {"optim.lr": []}}', "empty"), "has no runs"),
        (
            _sweep_file(tmp_path, '{"grdi": {"optim.lr": [1e-3]}}', "bad_kind"),
            "unknown axis kind 'grdi'; allowed: grid, zip, random",
        ),
        (str(tmp_path / "missing.py"), "no such sweep file"),
    ]
    for file, message in cases:
        result = genlab("sweep", file, "--root", str(tmp_path / "r"))
        assert result.returncode == 2 and message in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
    other = _sweep_file(tmp_path, '{"grid": {"optim.lr": [1e-3]}}', "other")
    owned = tmp_path / "owned"
    owned.mkdir()
    (owned / "sweep.json").write_text(json.dumps({"sweep": "/somewhere/else.py", "runs": []}))
    result = genlab("sweep", other, "--root", str(owned))
    assert result.returncode == 2 and "belongs to the sweep /somewhere/else.py" in result.stderr


def test_local_sweep_then_compare_then_rerun_skips_and_resumes(tmp_path):
    file = _sweep_file(tmp_path, '{"grid": {"optim.lr": [1e-3, 3e-3], "model.emb_dim": [32, 64]}}')
    root = tmp_path / "root"
    genlab(
        "sweep",
        file,
        "--root",
        str(root),
        "--parallel",
        "2",
        check=True,
        timeout=600,
        env=ONE_DEVICE,
    )
    manifest = json.loads((root / "sweep.json").read_text())
    assert [r["status"] for r in manifest["runs"]] == ["done"] * 4

    report = tmp_path / "report"
    genlab(
        "compare",
        str(root),
        "--metric",
        "eval/loss",
        "--metric",
        "eval/ppl",
        "--out",
        str(report),
        check=True,
    )
    rows = list(csv.DictReader((report / "compare.csv").open()))
    runs = [r for r in rows if not r["run"].startswith("reference")]
    assert len(runs) == 4 and all(float(r["eval/loss final"]) > 0 for r in runs)
    assert {"model.emb_dim=32, optim.lr=0.001", "model.emb_dim=64, optim.lr=0.003"} <= {
        r["config differences"] for r in runs
    }
    assert any(r["run"].startswith("reference") and r["eval/loss final"] == "1.4697" for r in rows)
    assert "| run |" in (report / "compare.md").read_text()
    for png in ("eval_loss.png", "eval_ppl.png"):
        assert (report / png).read_bytes()[:4] == b"\x89PNG"

    interrupted = root / manifest["runs"][0]["name"]
    shutil.rmtree(interrupted / "checkpoints" / "20")  # as if killed after step 10's checkpoint
    result = genlab("sweep", file, "--root", str(root), check=True, timeout=600, env=ONE_DEVICE)
    assert "3 already done, 1 to run" in result.stdout
    assert "resumed from the checkpoint of step 10" in (interrupted / "sweep_run.log").read_text()
    assert (interrupted / "checkpoints" / "20").is_dir()


def test_slurm_parameters_and_sbatch_script(tmp_path, monkeypatch):
    params = backends.slurm_parameters(
        {
            "nodes": 2,
            "gpus_per_node": 8,
            "timeout_min": 120,
            "partition": "gpu",
            "account": "proj",
            "constraint": None,
        }
    )
    assert params == {
        "nodes": 2,
        "gpus_per_node": 8,
        "tasks_per_node": 8,
        "timeout_min": 120,
        "slurm_partition": "gpu",
        "slurm_account": "proj",
        "slurm_additional_parameters": {"requeue": True, "signal": "USR2@90"},
    }
    with pytest.raises(UserError, match="unknown keys \\['gpus'\\]"):
        backends.slurm_parameters({"gpus": 8})

    import submitit

    fake_bin = tmp_path / "bin"  # submitit checks that srun exists before writing the script
    fake_bin.mkdir()
    (fake_bin / "srun").write_text("#!/bin/sh\n")
    (fake_bin / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake_bin}:{os.environ['PATH']}")
    executor = submitit.AutoExecutor(folder=str(tmp_path / "%j"), cluster="slurm")
    executor.update_parameters(name="sweep", **params)
    script = executor._executor._make_submission_file_text("python -m launch.cli train", "uid")
    for line in (
        "#SBATCH --nodes=2",
        "#SBATCH --gpus-per-node=8",
        "#SBATCH --ntasks-per-node=8",
        "#SBATCH --partition=gpu",
        "#SBATCH --account=proj",
        "#SBATCH --time=120",
        "#SBATCH --requeue",
        "#SBATCH --signal=USR2@90",
    ):
        assert line in script


def test_submitit_local_executor_runs_the_real_submission_path(tmp_path):
    file = _sweep_file(tmp_path, '{"grid": {"optim.lr": [1e-3]}}')
    definition = sweep.load_sweep(file)
    runs = sweep.expand(definition, tmp_path / "s.py", tmp_path / "root")
    jobs = backends.submit_slurm(runs, tmp_path / "root", {"timeout_min": 10}, cluster="local")
    assert [job.result() for job in jobs] == [0]
    assert (runs[0].workdir / "checkpoints" / "20").is_dir()
    assert REPO.is_dir()


def test_compare_leaves_out_keys_a_run_lacks_and_keeps_one_row_per_run(tmp_path):
    from launch.compare import RunRecord, build_table, write_reports

    lm = RunRecord("lm", tmp_path, {"task": "lm", "sample": {"prompt": "\n"}}, [])
    vae = RunRecord("vae", tmp_path, {"task": "vae", "model": {"latents": [50]}}, [])
    rows = build_table([lm, vae], ["eval/loss"])
    assert rows[0]["config differences"] == "sample.prompt=\n, task=lm"
    assert rows[1]["config differences"] == "model.latents=[50], task=vae"
    write_reports(rows, [lm, vae], [], tmp_path / "report")
    markdown = (tmp_path / "report" / "compare.md").read_text()
    table = [line for line in markdown.splitlines() if line.startswith("|")]
    assert len(table) == 4 and "None" not in markdown  # header, rule, one row per run
