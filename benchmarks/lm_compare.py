"""Transformer vs selective SSM vs LSTM at the same size on Tiny Shakespeare:
`python benchmarks/lm_compare.py`.

Trains `experiments/shakespeare_char.py:cpu`, `:ssm` and `:lstm` (about 0.8M parameters each;
the same data, batch 12, block 64, AdamW schedule and number of steps) with `genlab train`, then
for each model records
  - the val loss after those steps, over 400 validation batches (`genlab eval`),
  - train tokens/s: the median of the logged windows, the first left out (compilation),
  - generation tokens/s and peak memory for 256, 1024 and 4096 new tokens (batch 1, prompt
    "\\n", temperature 0.8), each measured in a fresh process: a warm-up generation compiles,
    a second one is timed. Memory is given two ways: `peak_rss_mib`, the process's ru_maxrss
    (so it includes the JAX runtime, the restored run and compilation; `rss_before_mib` is the
    RSS just before generating), and `xla_bytes`, the argument + output + temporary buffers
    XLA's buffer assignment gives the compiled generation program (the model's own state:
    KV cache or recurrent state, parameters, logits).
Results go to `benchmarks/results/lm_compare.json`, one entry per model, saved as each finishes.
A model whose entry was made with the same number of steps is skipped (`--force` redoes it), and
the runs' workdirs (`--workdir_root`) resume if the script is interrupted.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.common import genlab, last_json  # noqa: E402

VARIANTS = {"transformer": "cpu", "ssm": "ssm", "lstm": "lstm"}
LENGTHS = (256, 1024, 4096)
PRECISE_EVAL_BATCHES = 400


def measure_generation(workdir: Path, num_tokens: int) -> dict:
    """In this (fresh) process: restore the run on one device, generate twice, time the second."""
    import jax

    from launch.config import read_config
    from train.capabilities import TextSampling
    from train.data.splits import NONE
    from train.metadata import CONFIG_FILE
    from train.tasks.lm import sampling as lm
    from train.trainer import restore_run

    config = read_config(workdir / CONFIG_FILE)
    with config.unlocked():
        config.mesh.update(data=1, fsdp=1, tensor=1)
    task, state, _, step = restore_run(config, workdir, None, jax.devices()[:1], NONE)
    rss_before = _rss_mib()
    settings = lambda seed: TextSampling(num_tokens, seed, temperature=0.8)
    generate = lambda seed: task.sample_text(state, "\n", settings(seed))
    started = time.perf_counter()
    generate(0)
    first = time.perf_counter() - started
    started = time.perf_counter()
    text = generate(1)
    timed = time.perf_counter() - started
    return {
        "num_tokens": num_tokens,
        "step": step,
        "tokens_per_s": round(num_tokens / timed, 1),
        "timed_s": round(timed, 3),
        "first_call_s": round(first, 3),
        "rss_before_mib": round(rss_before, 1),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "xla_bytes": _program_bytes(task, state.params, num_tokens, lm),
        "generated_chars": len(text),
        "num_params": int(sum(x.size for x in jax.tree.leaves(state.params))),
    }


def _rss_mib() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def _program_bytes(task, params, num_tokens: int, lm) -> int:
    """Arguments + outputs + temporaries of the compiled generation program (one window of the
    Transformer's, which restarts from half a window when its cache is full)."""
    import jax
    import jax.numpy as jnp

    prompt = jnp.asarray([task.tokenizer.encode("\n")], jnp.int32)
    if task.arch == "transformer":  # one window: until the cache is full
        num_tokens = task.model.max_len - prompt.shape[1] + 1
    lowered = lm.decode_tokens.lower(
        task.model, params, prompt, num_tokens, jax.random.key(0), 0.8, 0, 1.0
    )
    stats = lowered.compile().memory_analysis()
    if stats is None:
        return -1
    return int(
        stats.argument_size_in_bytes
        + stats.output_size_in_bytes
        + stats.temp_size_in_bytes
        - stats.alias_size_in_bytes
    )


def _measure_in_fresh_process(workdir: Path, num_tokens: int) -> dict:
    output = subprocess.run(
        [sys.executable, __file__, "--measure", str(workdir), "--num_tokens", str(num_tokens)],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    if output.returncode:
        raise SystemExit(f"generation of {num_tokens} tokens failed:\n{output.stderr[-3000:]}")
    return json.loads(output.stdout.strip().splitlines()[-1])


def benchmark_model(name: str, args: argparse.Namespace) -> dict:
    from train.checkpoint import Checkpoints
    from train.logging import read_metrics

    workdir = Path(args.workdir_root) / name
    config = f"experiments/shakespeare_char.py:{VARIANTS[name]}"
    done = (workdir / "checkpoints").is_dir() and Checkpoints(
        workdir, read_only=True
    ).latest_step() == args.steps
    started = time.perf_counter()
    if not done:
        genlab(
            "train",
            "--config",
            config,
            "--workdir",
            str(workdir),
            f"--config.data.path={args.data}",
            f"--config.train.steps={args.steps}",
            "--config.train.progress_bar=false",
        )
    train_wall = time.perf_counter() - started
    evaluation = last_json(
        genlab(
            "eval", "--workdir", str(workdir), f"--config.train.eval_batches={args.eval_batches}"
        )
    )
    records = read_metrics(workdir)
    windows = [r["perf/tokens_per_s"] for r in records if "perf/tokens_per_s" in r]
    steady = windows[1:] or windows
    final = [r for r in records if "eval/loss" in r][-1]
    model = json.loads((workdir / "config.json").read_text())["model"]
    generation = {str(n): _measure_in_fresh_process(workdir, n) for n in args.lengths}
    return {
        "config": config,
        "workdir": str(workdir),
        "steps": args.steps,
        "num_params": generation[str(args.lengths[0])]["num_params"],
        "val_loss": round(evaluation["eval/loss"], 4),
        "val_loss_note": f"{args.eval_batches} validation batches of 12 x 64 characters",
        "val_loss_in_training": round(final["eval/loss"], 4),
        "train_tokens_per_s": round(statistics.median(steady), 1) if steady else None,
        "train_tokens_per_s_note": f"median of {len(steady)} logging windows, first left out",
        "train_wall_s": round(train_wall, 1) if not done else "skipped (already trained)",
        "final_train_loss": round([r for r in records if "train/loss" in r][-1]["train/loss"], 4),
        "generation": generation,
        "model": model,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data", default=str(REPO.parent / "shared/data/tinyshakespeare/input.txt")
    )
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--models", default=",".join(VARIANTS), help="comma-separated subset")
    parser.add_argument("--lengths", type=lambda s: [int(x) for x in s.split(",")], default=LENGTHS)
    parser.add_argument("--eval_batches", type=int, default=PRECISE_EVAL_BATCHES)
    parser.add_argument("--workdir_root", default=str(REPO / "runs/lm_compare"))
    parser.add_argument("--out", default=str(REPO / "benchmarks/results/lm_compare.json"))
    parser.add_argument("--force", action="store_true", help="redo models already in --out")
    parser.add_argument("--measure", default=None, help=argparse.SUPPRESS)  # internal
    parser.add_argument("--num_tokens", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure_generation(Path(args.measure), args.num_tokens)))
        return

    from train.metadata import collect, cpu_name

    out = Path(args.out)
    result = json.loads(out.read_text()) if out.is_file() else {}
    result.setdefault("models", {})
    for name in args.models.split(","):
        if name not in VARIANTS:
            raise SystemExit(f"--models: unknown model {name!r}; allowed: {', '.join(VARIANTS)}")
        previous = result["models"].get(name)
        if previous and previous["steps"] == args.steps and not args.force:
            print(f"{name}: already in {out} ({args.steps} steps), skipped")
            continue
        load_before = os.getloadavg()
        entry = benchmark_model(name, args)
        entry["load_average_before_after"] = [load_before[0], os.getloadavg()[0]]
        result["models"][name] = entry
        result.update(
            benchmark="Transformer vs selective SSM vs LSTM, Tiny Shakespeare char-level",
            generation_note=(
                "batch 1, prompt '\\n', temperature 0.8; timed after a warm-up call, each length "
                "in a fresh process; peak_rss_mib is that process's ru_maxrss (JAX runtime and "
                "compilation included), xla_bytes the compiled generation program's buffers"
            ),
            machine={"cpu": cpu_name(), "cores": os.cpu_count()},
            environment=collect(sys.argv),
        )
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps({name: {k: v for k, v in entry.items() if k != "model"}}, indent=2))


if __name__ == "__main__":
    main()
