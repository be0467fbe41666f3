"""The GAN `cpu` result: `python benchmarks/gan_cpu.py`.

Runs the documented commands: `genlab train` on `experiments/gan_mnist.py:cpu` (hinge loss,
spectrally normalized discriminator, EMA generator), then `genlab eval --metric fid` on 10,000
EMA-generator samples against the first 10,000 MNIST test images. Each stage is skipped when its
output exists, so an interrupted run resumes. Writes `benchmarks/results/gan_cpu.json`, the final
sample grid and a strip of grids over training to `benchmarks/results/gan_cpu/`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.common import DATA, copy_newest, steps_per_second, timed  # noqa: E402
from train.logging import read_metrics  # noqa: E402
from train.metadata import collect  # noqa: E402

# Reference points measured here and published ones (other data, for scale only).
CONTEXT = {
    "fid_mnist_train_vs_test_10k": "benchmarks/results/fid_reference.json",
    "dcgan_cifar10_fid_10k": "28.12 (Kurach et al., via kwotsin/mimicry; CIFAR-10, not MNIST)",
    "sngan_cifar10_fid": "21.7 (Miyato et al. 2018, ResNet; CIFAR-10, not MNIST)",
}


def progress_strip(samples: Path, steps: list[int], out: Path) -> None:
    """The fixed-noise grids of several steps side by side (top-left 4x4 of each)."""
    tiles = []
    for step in steps:
        grid = np.asarray(Image.open(samples / f"samples_{step:07d}.png"))
        tiles.append(grid[: grid.shape[0] // 2, : grid.shape[1] // 2])
    Image.fromarray(np.concatenate(tiles, axis=1)).save(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(DATA / "mnist"))
    parser.add_argument("--workdir", default=str(REPO / "runs/gan_cpu"))
    parser.add_argument("--num_samples", type=int, default=10_000)
    parser.add_argument("--out", default=str(REPO / "benchmarks/results/gan_cpu.json"))
    args = parser.parse_args()
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)

    config = "experiments/gan_mnist.py:cpu"
    train, train_wall = timed(
        "train",
        workdir / "result_train.json",
        *("train", "--config", config, "--workdir", str(workdir)),
        *(f"--config.data.path={args.data}", "--config.train.progress_bar=false"),
    )
    scores, fid_wall = timed(
        "fid",
        workdir / "result_fid.json",
        *("eval", "--workdir", str(workdir), "--metric", "fid"),
        *("--num_samples", str(args.num_samples)),
    )

    steps = sorted(r["step"] for r in read_metrics(workdir) if "eval/d_loss" in r)
    pictures = Path(args.out).with_suffix("")
    copy_newest(workdir / "samples", "samples", pictures / "samples.png")
    shown = [s for s in steps if s in (500, 1000, 2000)] + [steps[-1]]
    progress_strip(workdir / "samples", shown, pictures / "progress.png")
    saved = json.loads((workdir / "config.json").read_text())
    result = {
        "benchmark": "GAN (hinge loss, spectral norm, EMA generator) on MNIST",
        "config": config,
        "steps": scores["step"],
        "batch_size": saved["train"]["batch_size"],
        "fid": round(scores["eval/fid"], 2),
        "kid": round(scores["eval/kid"], 5),
        "kid_std": round(scores["eval/kid_std"], 5),
        "fid_samples": scores["fid/num_samples"],
        "fid_reference": scores["fid/reference"],
        "fid_resize": scores["fid/resize"],
        "fid_inputs": scores["fid/inputs"],
        "train_wall_s": train_wall or train.get("train_wall_s"),
        "steps_per_s": steps_per_second(workdir),
        "fid_eval_wall_s": fid_wall or scores.get("fid_wall_s"),
        "progress_steps": shown,
        "pictures": str(pictures.relative_to(REPO)),
        "context": CONTEXT,
        "environment": collect(sys.argv),
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "environment"}, indent=2))


if __name__ == "__main__":
    main()
