"""The VAE `cpu` result: `python benchmarks/vae_cpu.py`.

Trains `experiments/vae_mnist.py:cpu` (the IWAE paper's 1-stochastic-layer VAE on dynamically
binarized MNIST, with a shortened schedule), then scores the MNIST test set with the
importance-weighted bound at k = 5000. Writes the numbers to `benchmarks/results/vae_cpu.json`
and the final picture grids to `benchmarks/results/vae_cpu/`.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from launch.config import apply_overrides, load_config  # noqa: E402
from launch.cpu_devices import split_cpu  # noqa: E402

# Burda et al. 2015 (IWAE), Table 1: test NLL (nats), models trained with k = 1, NLL by k = 5000.
PAPER = {
    "vae_1_layer_k1": 86.76,
    "vae_2_layers_k1": 85.33,
    "note": "dynamic binarization, 3280 passes; a fixed binarization scores ~2 nats worse",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(REPO.parent / "shared/data/mnist"))
    parser.add_argument("--steps", type=int, default=0, help="0: the variant's schedule")
    parser.add_argument("--nll_samples", type=int, default=5000)
    parser.add_argument("--out", default=str(REPO / "benchmarks/results/vae_cpu.json"))
    args = parser.parse_args()

    config = load_config(f"{REPO}/experiments/vae_mnist.py:cpu")
    overrides = {"data.path": args.data, "train.progress_bar": "false"}
    if args.steps:
        overrides["train.steps"] = str(args.steps)
    apply_overrides(config, overrides)
    split_cpu(config)
    from train.logging import read_metrics
    from train.metadata import collect
    from train.trainer import evaluate_run, train

    workdir = Path(tempfile.mkdtemp(prefix="vae_cpu_"))
    started = time.perf_counter()
    train(config, workdir)
    train_wall = time.perf_counter() - started

    final = config.copy_and_resolve_references()
    apply_overrides(final, {"eval.iwae_samples": str(args.nll_samples)})
    started = time.perf_counter()
    step, metrics = evaluate_run(final, workdir)
    eval_wall = time.perf_counter() - started

    records = read_metrics(workdir)
    step_times = [r["perf/step_time_s"] for r in records if "perf/step_time_s" in r][1:]
    pictures = Path(args.out).with_suffix("")
    pictures.mkdir(parents=True, exist_ok=True)
    for kind in ("samples", "reconstructions", "interpolations"):
        newest = sorted((workdir / "samples").glob(f"{kind}_*.png"))[-1]
        shutil.copy(newest, pictures / f"{kind}.png")
    result = {
        "benchmark": "VAE (IWAE paper, 1 stochastic layer) on dynamically binarized MNIST",
        "config": "experiments/vae_mnist.py:cpu",
        "steps": step,
        "passes": round(step * config.train.batch_size / 60_000, 1),
        "test_elbo": round(metrics["eval/elbo"], 2),
        "test_nll": round(metrics["eval/nll"], 2),
        "test_nll_samples": args.nll_samples,
        "test_bpd": round(metrics["eval/bpd"], 4),
        "test_recon": round(metrics["eval/recon"], 2),
        "test_kl": round(metrics["eval/kl"], 2),
        "test_examples": 10_000,
        "train_wall_s": round(train_wall, 1),
        "nll_eval_wall_s": round(eval_wall, 1),
        "steps_per_s": round(1.0 / (sum(step_times) / len(step_times)), 1) if step_times else None,
        "pictures": str(pictures.relative_to(REPO)),
        "paper": PAPER,
        "environment": collect(sys.argv),
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "environment"}, indent=2))


if __name__ == "__main__":
    main()
