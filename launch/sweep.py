"""Sweeps: a base config plus axes (grid, zip, random search), expanded into runs with workdirs.

A sweep file defines `get_sweep() -> Sweep`. Every run is an ordinary `genlab train` command with
`--config.KEY=VALUE` overrides; its workdir is named after those overrides, under the sweep folder,
which also holds `sweep.json`: the runs, their overrides, commands and status.
"""

from __future__ import annotations

import itertools
import json
import math
import random
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from launch.config import apply_overrides, load_config, load_python_file
from train.errors import UserError

MANIFEST = "sweep.json"
Overrides = dict[str, Any]


# -- axes ---------------------------------------------------------------------------------------
def grid(axes: dict[str, Sequence[Any]]) -> list[Overrides]:
    """Every combination of the values (a Cartesian product)."""
    keys = list(axes)
    return [
        dict(zip(keys, values, strict=True))
        for values in itertools.product(*(axes[k] for k in keys))
    ]


def zipped(axes: dict[str, Sequence[Any]]) -> list[Overrides]:
    """The i-th value of every key together; all lists must have the same length."""
    lengths = {k: len(v) for k, v in axes.items()}
    if len(set(lengths.values())) > 1:
        raise UserError(f"zip axes need lists of equal length, got {lengths}")
    keys = list(axes)
    return [
        dict(zip(keys, values, strict=True))
        for values in zip(*(axes[k] for k in keys), strict=True)
    ]


Sampler = Callable[[random.Random], Any]


def uniform(low: float, high: float) -> Sampler:
    return lambda rng: rng.uniform(low, high)


def loguniform(low: float, high: float) -> Sampler:
    return lambda rng: math.exp(rng.uniform(math.log(low), math.log(high)))


def choice(values: Sequence[Any]) -> Sampler:
    return lambda rng: rng.choice(list(values))


def randint(low: int, high: int) -> Sampler:
    """An integer in [low, high]."""
    return lambda rng: rng.randint(low, high)


def random_search(axes: dict[str, Sampler], count: int, seed: int = 0) -> list[Overrides]:
    """`count` draws from the samplers, reproducible from `seed`; floats kept to 4 digits."""
    rng = random.Random(seed)
    runs = []
    for _ in range(count):
        run = {}
        for key, sample in axes.items():
            value = sample(rng)
            run[key] = float(f"{value:.4g}") if isinstance(value, float) else value
        runs.append(run)
    return runs


@dataclass
class Sweep:
    """`base` is `experiments/FILE.py:variant` (relative to the repository or absolute); `axes` are
    lists of overrides (from grid/zipped/random_search) whose product gives the runs; `slurm` holds
    cluster resources."""

    base: str
    axes: list[list[Overrides]] | list[Overrides]
    slurm: dict[str, Any] = field(default_factory=dict)
    overrides: Overrides = field(default_factory=dict)  # applied to every run


# -- expansion ----------------------------------------------------------------------------------
@dataclass
class Run:
    name: str
    overrides: Overrides
    workdir: Path
    command: list[str]


def load_sweep(path: str) -> Sweep:
    module = load_python_file(path, "get_sweep", "sweep", "sweep", "experiments/sweeps/NAME.py")
    return module.get_sweep()


def format_value(value: Any) -> str:
    return repr(value) if isinstance(value, str) and value == "" else str(value)


def run_name(overrides: Overrides) -> str:
    """Readable, filesystem-safe name: `optim.lr=0.001,model.num_layers=2`."""
    text = ",".join(f"{k}={format_value(v)}" for k, v in overrides.items()) or "base"
    return re.sub(r"[^A-Za-z0-9._=,+-]", "_", text)


def base_path(base: str, sweep_file: Path) -> str:
    """Resolve the base config against the working directory, genlab's folder, the sweep file's."""
    path, _, variant = base.partition(":")
    for root in (Path.cwd(), Path(__file__).resolve().parents[1], sweep_file.resolve().parent):
        if (root / path).is_file():
            return f"{(root / path).resolve()}:{variant}" if variant else str(root / path)
    raise UserError(f"sweep: base config {base!r} not found")


def expand(sweep: Sweep, sweep_file: Path, root: Path) -> list[Run]:
    """All runs of the sweep, each validated against the base config."""
    groups = sweep.axes
    if groups and isinstance(groups[0], dict):  # one axis given without its enclosing list
        groups = [groups]
    if not groups or any(len(axis) == 0 for axis in groups):
        raise UserError(f"sweep {sweep_file}: it has no runs (an axis is empty or there are none)")
    base = base_path(sweep.base, sweep_file)
    config = load_config(base)
    runs, names = [], set()
    for combo in itertools.product(*groups):
        overrides: Overrides = {}
        for part in combo:
            overrides.update(part)
        check = config.copy_and_resolve_references()
        check.lock()
        apply_overrides(
            check, {k: format_value(v) for k, v in {**sweep.overrides, **overrides}.items()}
        )
        name = run_name(overrides)
        if name in names:
            raise UserError(f"sweep {sweep_file}: two runs share the overrides {name}")
        names.add(name)
        workdir = root / name
        command = [
            sys.executable,
            "-m",
            "launch.cli",
            "train",
            "--config",
            base,
            "--workdir",
            str(workdir),
        ]
        command += [
            f"--config.{k}={format_value(v)}" for k, v in {**sweep.overrides, **overrides}.items()
        ]
        runs.append(Run(name, overrides, workdir, command))
    return runs


# -- manifest and status ------------------------------------------------------------------------
def run_status(run: Run) -> str:
    """done (final checkpoint present), interrupted (some checkpoint), or pending."""
    steps = _checkpoint_steps(run.workdir)
    if not steps:
        return "pending"
    config_file = run.workdir / "config.json"
    if config_file.is_file():
        total = json.loads(config_file.read_text())["train"]["steps"]
        if max(steps) >= total:
            return "done"
    return "interrupted"


def _checkpoint_steps(workdir: Path) -> list[int]:
    folder = workdir / "checkpoints"
    if not folder.is_dir():
        return []
    return [int(p.name) for p in folder.iterdir() if p.name.isdigit()]


def claim_folder(root: Path, sweep_file: Path) -> None:
    """Refuse a folder that belongs to a different sweep."""
    manifest = root / MANIFEST
    if manifest.is_file():
        owner = json.loads(manifest.read_text())["sweep"]
        if Path(owner).resolve() != sweep_file.resolve():
            raise UserError(
                f"sweep folder {root} belongs to the sweep {owner}; choose another --root"
            )
    elif root.is_dir() and any(root.iterdir()):
        raise UserError(
            f"sweep folder {root} is not empty and holds no {MANIFEST}; choose another --root"
        )


def write_manifest(
    root: Path, sweep_file: Path, sweep: Sweep, runs: list[Run], status: dict[str, str]
) -> None:
    root.mkdir(parents=True, exist_ok=True)
    manifest = {
        "sweep": str(sweep_file.resolve()),
        "base": sweep.base,
        "runs": [
            {
                "name": r.name,
                "overrides": r.overrides,
                "workdir": str(r.workdir),
                "command": r.command,
                "status": status.get(r.name, run_status(r)),
            }
            for r in runs
        ],
    }
    (root / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")


def read_manifest(root: Path) -> dict[str, Any]:
    return json.loads((root / MANIFEST).read_text())
