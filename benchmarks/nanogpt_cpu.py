"""nanoGPT's CPU recipe on Tiny Shakespeare, timed: `python benchmarks/nanogpt_cpu.py`.

Trains `experiments/shakespeare_char.py:cpu` (4 layers, 4 heads, 128 wide, block 64, batch 12,
2000 iterations) through the ordinary trainer and writes ms/iter, tokens/s, compile time, final
losses and peak memory to `benchmarks/results/nanogpt_cpu.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from launch.config import apply_overrides, load_config  # noqa: E402
from launch.cpu_devices import split_cpu  # noqa: E402

# Measured with PyTorch nanoGPT, same model and recipe, on a 2-core CPU (issue #2).
PYTORCH_REFERENCE = {"ms_per_iter": 45.0, "val_loss": 1.886, "source": "nanoGPT, 2-core CPU"}


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_data = REPO.parent / "shared/data/tinyshakespeare/input.txt"
    parser.add_argument("--data", default=str(default_data))
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--out", default=str(REPO / "benchmarks/results/nanogpt_cpu.json"))
    args = parser.parse_args()

    config = load_config(f"{REPO}/experiments/shakespeare_char.py:cpu")
    apply_overrides(
        config,
        {"data.path": args.data, "train.steps": str(args.steps), "train.progress_bar": "false"},
    )
    split_cpu(config)  # one XLA device per core, as `genlab train` does; before jax starts
    import jax

    from launch.metadata import collect
    from train.logging import read_metrics
    from train.trainer import train

    workdir = Path(tempfile.mkdtemp(prefix="nanogpt_cpu_"))
    started = time.perf_counter()
    final = train(config, workdir)
    wall = time.perf_counter() - started

    records = read_metrics(workdir)
    windows = [r["perf/step_time_s"] for r in records if "perf/step_time_s" in r]
    steady = windows[1:] or windows  # the first window still warms caches
    ms_per_iter = 1000 * statistics.median(steady)
    tokens_per_step = config.train.batch_size * config.data.block_size
    train_losses = [r["train/loss"] for r in records if "train/loss" in r]
    result = {
        "benchmark": "nanoGPT CPU recipe, Tiny Shakespeare char-level",
        "config": "experiments/shakespeare_char.py:cpu",
        "steps": args.steps,
        "ms_per_iter_median": round(ms_per_iter, 2),
        "ms_per_iter_note": f"median of {len(steady)} windows of {config.train.log_every} steps, "
        "first window left out; eval and checkpoint time excluded",
        "tokens_per_s": round(tokens_per_step / (ms_per_iter / 1000), 1),
        "mfu_vs_measured_matmul_peak": round(final.get("perf/mfu", float("nan")), 4),
        "compile_time_s": round(final["perf/compile_time_s"], 2),
        "wall_time_s": round(wall, 1),
        "final_train_loss": round(train_losses[-1], 4),
        "final_train_loss_note": f"mean of the last {config.train.log_every} steps' batch losses",
        "final_val_loss": round(final["eval/loss"], 4),
        "val_loss_note": f"mean over {config.train.eval_batches} validation batches",
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "machine": {
            "cpu": cpu_name(),
            "cores": os.cpu_count(),
            "xla_devices": jax.device_count(),
            "mesh": dict(config.mesh),
        },
        "environment": collect(sys.argv),
        "pytorch_reference": PYTORCH_REFERENCE,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "environment"}, indent=2))


if __name__ == "__main__":
    main()
