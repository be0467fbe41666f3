"""The GAN `cpu` result: `python benchmarks/gan_cpu.py`.

Runs the documented commands: `genlab train` on `experiments/gan_mnist.py:cpu` (hinge loss,
spectrally normalized discriminator, EMA generator), then `genlab eval --metric fid` on 10,000
EMA-generator samples against the first 10,000 MNIST test images. Writes
`benchmarks/results/gan_cpu.json`, the final sample grid and a strip of grids over training to
`benchmarks/results/gan_cpu/`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from train.logging import read_metrics  # noqa: E402
from train.metadata import collect  # noqa: E402

# Reference points measured here (benchmarks/results/fid_reference.json) and published ones.
CONTEXT = {
    "fid_mnist_train_vs_test_10k": "benchmarks/results/fid_reference.json",
    "dcgan_cifar10_fid_10k": "28.12 (Kurach et al., via kwotsin/mimicry; CIFAR-10, not MNIST)",
}


def genlab(*args: str) -> str:
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


def progress_strip(samples: Path, steps: list[int], out: Path) -> None:
    """The fixed-noise grids of several steps side by side (top-left 4x4 of each)."""
    tiles = []
    for step in steps:
        grid = np.asarray(Image.open(samples / f"samples_{step:07d}.png"))
        tiles.append(grid[: grid.shape[0] // 2, : grid.shape[1] // 2])
    Image.fromarray(np.concatenate(tiles, axis=1)).save(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(REPO.parent / "shared/data/mnist"))
    parser.add_argument("--workdir", default=str(REPO / "runs/gan_cpu"))
    parser.add_argument("--num_samples", type=int, default=10_000)
    parser.add_argument("--out", default=str(REPO / "benchmarks/results/gan_cpu.json"))
    args = parser.parse_args()
    workdir = Path(args.workdir)

    load_before = os.getloadavg()
    started = time.perf_counter()
    genlab(
        "train",
        "--config",
        "experiments/gan_mnist.py:cpu",
        "--workdir",
        str(workdir),
        f"--config.data.path={args.data}",
        "--config.train.progress_bar=false",
    )
    train_wall = time.perf_counter() - started
    load_during_training = os.getloadavg()

    started = time.perf_counter()
    scores = json.loads(
        genlab(
            "eval",
            "--workdir",
            str(workdir),
            "--metric",
            "fid",
            "--num_samples",
            str(args.num_samples),
        )
        .strip()
        .splitlines()[-1]
    )
    fid_wall = time.perf_counter() - started

    records = read_metrics(workdir)
    step_times = [r["perf/step_time_s"] for r in records if "perf/step_time_s" in r][1:]
    steps = sorted(r["step"] for r in records if "eval/d_loss" in r)
    pictures = Path(args.out).with_suffix("")
    pictures.mkdir(parents=True, exist_ok=True)
    final = workdir / "samples" / f"samples_{steps[-1]:07d}.png"
    (pictures / "samples.png").write_bytes(final.read_bytes())
    shown = [s for s in steps if s in (1000, 2000, 5000)] + [steps[-1]]
    progress_strip(workdir / "samples", shown, pictures / "progress.png")
    config = json.loads((workdir / "config.json").read_text())
    result = {
        "benchmark": "GAN (hinge loss, spectral norm, EMA generator) on MNIST",
        "config": "experiments/gan_mnist.py:cpu",
        "steps": scores["step"],
        "batch_size": config["train"]["batch_size"],
        "fid": round(scores["eval/fid"], 2),
        "kid": round(scores["eval/kid"], 5),
        "kid_std": round(scores["eval/kid_std"], 5),
        "fid_samples": scores["fid/num_samples"],
        "fid_reference": scores["fid/reference"],
        "fid_resize": scores["fid/resize"],
        "fid_inputs": scores["fid/inputs"],
        "train_wall_s": round(train_wall, 1),
        "steps_per_s": round(1.0 / (sum(step_times) / len(step_times)), 2) if step_times else None,
        "fid_eval_wall_s": round(fid_wall, 1),
        "load_average_before_and_after_training": [
            round(load_before[0], 2),
            round(load_during_training[0], 2),
        ],
        "progress_steps": shown,
        "pictures": str(pictures.relative_to(REPO)),
        "context": CONTEXT,
        "environment": collect(sys.argv),
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "environment"}, indent=2))


if __name__ == "__main__":
    main()
