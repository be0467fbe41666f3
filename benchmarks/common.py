"""What the result scripts share: running `genlab` as users do, and reading a run's records."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"


def genlab(*args: str) -> str:
    """Run `genlab ARGS` in a fresh process; its stdout, or exit with its stderr on failure."""
    result = subprocess.run(
        [sys.executable, "-m", "launch.cli", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode:
        raise SystemExit(f"genlab {' '.join(args)} failed:\n{result.stderr[-3000:]}")
    return result.stdout


def last_json(stdout: str) -> dict[str, Any]:
    """The JSON object `genlab train` / `genlab eval` prints last."""
    return json.loads(stdout.strip().splitlines()[-1])


def steps_per_second(workdir: Path) -> float | None:
    """Mean training rate over the logged windows, the first (compilation) window left out."""
    from train.logging import read_metrics

    times = [r["perf/step_time_s"] for r in read_metrics(workdir) if "perf/step_time_s" in r][1:]
    return round(len(times) / sum(times), 2) if times else None


def copy_newest(samples: Path, prefix: str, destination: Path) -> Path:
    """Copy the newest `samples/<prefix>_<step>.png` of a run to `destination`."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(sorted(samples.glob(f"{prefix}_*.png"))[-1], destination)
    return destination


def timed(stage: str, done: Path, *args: str) -> tuple[dict, float | None]:
    """Run a genlab stage unless `done` (its saved output) exists; (its JSON, seconds or None)."""
    if done.is_file():
        return json.loads(done.read_text()), None
    started = time.perf_counter()
    result = last_json(genlab(*args))
    seconds = round(time.perf_counter() - started, 1)
    result = {**result, f"{stage}_wall_s": seconds}
    done.write_text(json.dumps(result) + "\n")
    return result, seconds


def trained_run(root: Path, name: str, config: str, data: Path) -> tuple[dict, Path]:
    """`genlab train` of `config` on `data` into `root/name`, unless `root/name.train.json` says
    it finished; (its final JSON with `train_wall_s`, its workdir). Result scripts that share a
    `--root` share the runs they both need."""
    workdir = root / name
    workdir.mkdir(parents=True, exist_ok=True)
    trained, seconds = timed(
        "train", root / f"{name}.train.json",
        "train", "--config", config, "--workdir", str(workdir), f"--config.data.path={data}",
        "--config.train.progress_bar=false",
    )  # fmt: skip
    trained.setdefault("train_wall_s", seconds)
    return trained, workdir
