"""Sweeps: a base config plus axes (grid, zip, random search), expanded into runs with workdirs.

A sweep file is data: its `get_sweep()` returns a dict of Python literals (see
experiments/sweeps/__init__.py), which `load_sweep` checks and turns into a `Sweep`. Every run is an
ordinary `genlab train` command with `--config.KEY=VALUE` overrides; its workdir is named after
those overrides, under the sweep folder, which also holds `sweep.json`: the runs, their overrides,
commands and status.
"""

from __future__ import annotations

import itertools
import json
import math
import os
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
LOG_FILE = "sweep_run.log"  # each run's output, in its workdir, across attempts
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
    """`base` is `experiments/FILE.py:variant` (relative to the repository or absolute); each axis
    is a list of overrides, and the product of the axes gives the runs; `slurm` holds cluster
    resources."""

    base: str
    axes: list[list[Overrides]]
    slurm: dict[str, Any] = field(default_factory=dict)
    overrides: Overrides = field(default_factory=dict)  # applied to every run


# -- the sweep file's data ----------------------------------------------------------------------
SAMPLERS: dict[str, Callable[..., Sampler]] = {
    "uniform": uniform,
    "loguniform": loguniform,
    "choice": choice,
    "randint": randint,
}
AXIS_KINDS = ("grid", "zip", "random")
TOP_KEYS = ("base", "axes", "overrides", "slurm")
LITERALS = "str, int, float, bool, None or a list of them"


def _is_literal(value: Any) -> bool:
    if isinstance(value, list | tuple):
        return all(_is_literal(v) for v in value)
    return value is None or isinstance(value, str | int | float | bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _mapping(value: Any, where: str, what: str) -> dict[str, Any]:
    """A dict with non-empty string keys (config keys such as `optim.lr`, or resource names)."""
    if not isinstance(value, dict):
        raise UserError(f"{where}: expected a dict of {what}, got {value!r}")
    for key in value:
        if not isinstance(key, str) or not key:
            raise UserError(f"{where}: keys must be non-empty strings, got {key!r}")
    return value


def _literals(value: Any, where: str, what: str) -> dict[str, Any]:
    """A dict of plain values: what `--config.KEY=VALUE` (or a SLURM resource) can hold."""
    for key, item in _mapping(value, where, what).items():
        if not _is_literal(item):
            raise UserError(f"{where}: {key}={item!r} is not allowed; values are {LITERALS}")
    return dict(value)


def _value_lists(value: Any, where: str) -> dict[str, list[Any]]:
    """`{key: [values]}` for grid and zip axes."""
    axes = _mapping(value, where, "config keys to lists of values")
    if not axes:
        raise UserError(f"{where}: needs at least one config key")
    for key, values in axes.items():
        if not isinstance(values, list | tuple) or not _is_literal(values):
            raise UserError(f"{where}: {key} needs a list of values ({LITERALS}), got {values!r}")
    return {key: list(values) for key, values in axes.items()}


def _sampler(spec: Any, where: str) -> Sampler:
    """`{"loguniform": [low, high]}`, `{"uniform": [low, high]}`, `{"randint": [low, high]}`
    (both ends included) or `{"choice": [values]}`."""
    allowed = ", ".join(SAMPLERS)
    if not isinstance(spec, dict) or len(spec) != 1:
        raise UserError(f"{where}: a sampler is a one-key dict of {allowed}; got {spec!r}")
    ((name, args),) = spec.items()
    if name not in SAMPLERS:
        raise UserError(f"{where}: unknown sampler {name!r}; allowed: {allowed}")
    if name == "choice":
        if not isinstance(args, list | tuple) or not args or not _is_literal(args):
            raise UserError(f"{where}: choice needs a non-empty list of {LITERALS}, got {args!r}")
        return choice(list(args))
    check = _is_int if name == "randint" else _is_number
    if not (isinstance(args, list | tuple) and len(args) == 2 and all(map(check, args))):
        kind = "integers" if name == "randint" else "numbers"
        raise UserError(f"{where}: {name} needs [low, high], two {kind}, got {args!r}")
    low, high = args
    if low > high or (name == "loguniform" and low <= 0):
        rule = "0 < low <= high" if name == "loguniform" else "low <= high"
        raise UserError(f"{where}: {name} needs {rule}, got {list(args)}")
    return SAMPLERS[name](low, high)


def _axis(data: Any, where: str) -> list[Overrides]:
    """One axis: `{"grid": {...}}`, `{"zip": {...}}` or `{"random": {...}, "count": N}` (and an
    optional `"seed"`, 0 by default)."""
    kinds = ", ".join(AXIS_KINDS)
    if not isinstance(data, dict) or not data:
        raise UserError(f"{where}: an axis is a dict with one of {kinds}; got {data!r}")
    given = [key for key in data if key in AXIS_KINDS]
    if not given:
        unknown = next(iter(data), None)
        raise UserError(f"{where}: unknown axis kind {unknown!r}; allowed: {kinds}")
    if len(given) > 1:
        raise UserError(f"{where}: an axis has exactly one of {kinds}, got {', '.join(given)}")
    kind = given[0]
    options = ("count", "seed") if kind == "random" else ()
    for key in data:
        if key != kind and key not in options:
            extra = f"; allowed besides {kind}: {', '.join(options)}" if options else ""
            raise UserError(f"{where}: unknown key {key!r} in a {kind} axis{extra}")
    where = f"{where}.{kind}"
    if kind == "grid":
        return grid(_value_lists(data[kind], where))
    if kind == "zip":
        try:
            return zipped(_value_lists(data[kind], where))
        except UserError as error:
            raise UserError(f"{where}: {error}") from None
    samplers = _mapping(data[kind], where, "config keys to samplers")
    if not samplers:
        raise UserError(f"{where}: needs at least one config key")
    count, seed = data.get("count"), data.get("seed", 0)
    if not _is_int(count) or count < 1:
        raise UserError(f"{where}: count needs a positive integer, got {count!r}")
    if not _is_int(seed):
        raise UserError(f"{where}: seed needs an integer, got {seed!r}")
    drawn = {key: _sampler(spec, f"{where}.{key}") for key, spec in samplers.items()}
    return random_search(drawn, count, seed)


def parse_sweep(data: Any, where: str) -> Sweep:
    """Check a sweep file's data and build its Sweep; every mistake is a one-line UserError."""
    if not isinstance(data, dict):
        raise UserError(
            f"{where}: get_sweep() must return a dict with keys {', '.join(TOP_KEYS)}; "
            f"got {type(data).__name__}"
        )
    for key in data:
        if key not in TOP_KEYS:
            raise UserError(f"{where}: unknown key {key!r}; allowed: {', '.join(TOP_KEYS)}")
    for key in ("base", "axes"):
        if key not in data:
            raise UserError(f"{where}: missing key {key!r}")
    base, axes = data["base"], data["axes"]
    if not isinstance(base, str) or not base:
        raise UserError(f"{where}: base needs 'experiments/NAME.py[:variant]', got {base!r}")
    if not isinstance(axes, list | tuple):
        raise UserError(f"{where}: axes needs a list of axes (dicts), got {axes!r}")
    return Sweep(
        base=base,
        axes=[_axis(axis, f"{where}: axes[{i}]") for i, axis in enumerate(axes)],
        slurm=_literals(data.get("slurm", {}), f"{where}: slurm", "resources to values"),
        overrides=_literals(
            data.get("overrides", {}), f"{where}: overrides", "config keys to values"
        ),
    )


# -- expansion ----------------------------------------------------------------------------------
@dataclass
class Run:
    name: str
    overrides: Overrides
    workdir: Path
    command: list[str]


def load_sweep(path: str) -> Sweep:
    """Import the sweep file, call its `get_sweep()` and check the data it returns."""
    module = load_python_file(path, "get_sweep", "sweep", "sweep", "experiments/sweeps/NAME.py")
    try:
        data = module.get_sweep()
    except Exception as error:  # the file's own code failed: say where, in one line
        raise UserError(
            f"sweep: {path}: get_sweep() failed: {type(error).__name__}: {error}"
        ) from None
    return parse_sweep(data, f"sweep {path}")


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
    steps = checkpoint_steps(run.workdir)
    if not steps:
        return "pending"
    config_file = run.workdir / "config.json"
    if config_file.is_file():
        total = json.loads(config_file.read_text())["train"]["steps"]
        if max(steps) >= total:
            return "done"
    return "interrupted"


def checkpoint_steps(workdir: Path) -> list[int]:
    """The steps of the finished checkpoints in a workdir (Orbax's temporary folders left out)."""
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
    root: Path,
    sweep_file: Path,
    sweep: Sweep,
    runs: list[Run],
    status: dict[str, str],
    jobs: dict[str, dict[str, Any]] | None = None,
) -> None:
    """`sweep.json`: every run, its command and status, its latest checkpoint and, for SLURM,
    what `jobs` holds for it (job id, SLURM's state, restarts). Replaced atomically, so a
    concurrent `--status` never reads half a file."""
    root.mkdir(parents=True, exist_ok=True)
    jobs = jobs or {}
    manifest = {
        "sweep": str(sweep_file.resolve()),
        "base": sweep.base,
        "runs": [
            {
                "name": r.name,
                "overrides": r.overrides,
                "workdir": str(r.workdir),
                "command": r.command,
                "status": status.get(r.name) or run_status(r),
                "checkpoint": max(checkpoint_steps(r.workdir), default=None),
                **jobs.get(r.name, {}),
            }
            for r in runs
        ],
    }
    partial = root / f".{MANIFEST}.{os.getpid()}"
    partial.write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(partial, root / MANIFEST)


def manifest_jobs(root: Path) -> dict[str, str]:
    """Each run's SLURM job id from an earlier launch (none for local runs or a new folder)."""
    if not (root / MANIFEST).is_file():
        return {}
    return {r["name"]: r["job_id"] for r in read_manifest(root)["runs"] if r.get("job_id")}


def read_manifest(root: Path) -> dict[str, Any]:
    return json.loads((root / MANIFEST).read_text())
