"""nanoGPT's CPU recipe on Tiny Shakespeare, timed: `python benchmarks/nanogpt_cpu.py`.

Trains `experiments/shakespeare_char.py:cpu` (4 layers, 4 heads, 128 wide, block 64, batch 12,
2000 iterations) through the ordinary trainer and writes ms/iter, tokens/s, compile time, final
losses and peak memory to `benchmarks/results/nanogpt_cpu.json`.
"""

from __future__ import annotations

import argparse
import json
import os
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
from train.metadata import cpu_name  # noqa: E402

# The figures for PyTorch nanoGPT with this recipe on a 2-core CPU; the same-machine
# measurement of benchmarks/pytorch_reference.py is read from its JSON when present.
NANOGPT_REPORTED = {
    "ms_per_iter": 45.0,
    "val_loss_20_batches": 1.886,
    "source": "PyTorch nanoGPT on a 2-core CPU, as quoted in issue #2",
}
PYTORCH_JSON = REPO / "benchmarks/results/pytorch_reference.json"
PRECISE_EVAL_BATCHES = 400


def _pytorch_summary() -> dict | None:
    if not PYTORCH_JSON.is_file():
        return None
    ref = json.loads(PYTORCH_JSON.read_text())
    keys = (
        "mode",
        "ms_per_iter_median",
        "tokens_per_s",
        "val_loss_20",
        "val_loss_400",
        "train_loss_20",
        "total_wall_s",
        "peak_rss_mib",
    )
    return {"file": str(PYTORCH_JSON.relative_to(REPO)), **{k: ref.get(k) for k in keys}}


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

    from train.logging import read_metrics
    from train.metadata import collect
    from train.trainer import evaluate_run, train

    workdir = Path(tempfile.mkdtemp(prefix="nanogpt_cpu_"))
    started = time.perf_counter()
    final = train(config, workdir)
    wall = time.perf_counter() - started
    precise = config.copy_and_resolve_references()
    apply_overrides(precise, {"train.eval_batches": str(PRECISE_EVAL_BATCHES)})
    _, precise_metrics = evaluate_run(precise, workdir)

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
        f"final_val_loss_{PRECISE_EVAL_BATCHES}_batches": round(precise_metrics["eval/loss"], 4),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "machine": {
            "cpu": cpu_name(),
            "cores": os.cpu_count(),
            "xla_devices": jax.device_count(),
            "mesh": dict(config.mesh),
        },
        "environment": collect(sys.argv),
        "nanogpt_reported": NANOGPT_REPORTED,
        "pytorch_same_machine": _pytorch_summary(),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "environment"}, indent=2))


if __name__ == "__main__":
    main()
