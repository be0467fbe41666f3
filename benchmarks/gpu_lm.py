"""genlab beside PyTorch on one GPU, in one run: `python benchmarks/gpu_lm.py`.

Two parts, each run by both sides one after the other in fresh processes (never at once):
  recipe  experiments/shakespeare_char.py:gpu (nanoGPT's train_shakespeare_char: 6 layers, 6
          heads, 384 wide, block 256, batch 64, dropout 0.2, 5000 steps, val every 250 steps over
          200 batches) through `genlab train`, against benchmarks/pytorch_reference.py --preset
          gpu (torch.compile, bf16 autocast, flash attention, fused AdamW: nanoGPT's GPU set-up).
          ms/iter (median of the logged windows, first left out), best and final val loss, wall
          time from the process start to the eval that gave the best val loss.
  gpt2    GPT-2 small at its real shape (124M parameters, vocabulary 50,304, block 1024, batch
          16) on random tokens: experiments/gpt2_synthetic.py:124m against --preset gpt2.
          ms/iter, tokens/s, MFU (6N + 12LTd per token over the dense bf16 peak).
Results, with the device, versions and the exact commands, go to benchmarks/results/gpu_lm.json
(rewritten after every stage, so a run cut short keeps what finished). `--smoke` runs each
stage for a few steps only, to check the script itself (on a CPU too: `--device cpu`).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared/data/tinyshakespeare/input.txt"
PACKAGES = ("jax", "jaxlib", "jax-cuda13-plugin", "flax", "optax", "orbax-checkpoint", "torch")
TARGETS = {"recipe_best_val_at_most": 1.47, "gpt2_mfu_at_least": 0.50}


def _versions() -> dict[str, str | None]:
    found = {}
    for name in PACKAGES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found


def _gpu() -> str | None:
    """The GPU's name, driver and memory from nvidia-smi (without starting JAX or PyTorch)."""
    if shutil.which("nvidia-smi") is None:
        return None
    query = "--query-gpu=name,driver_version,memory.total"
    out = subprocess.run(
        ["nvidia-smi", query, "--format=csv,noheader"], capture_output=True, text=True
    )
    return out.stdout.strip() or None


def _run(command: list[str], log: Path, xla_flags: str = "") -> tuple[int, float, float]:
    """Run `command` from the repository root, output to `log`; (exit code, start, seconds)."""
    env = dict(os.environ)
    if xla_flags:
        env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {xla_flags}".strip()
    started = time.time()
    with log.open("w") as out:
        code = subprocess.run(
            command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT
        ).returncode
    print(f"  exit {code} after {time.time() - started:.1f} s: {' '.join(command)}", flush=True)
    return code, started, time.time() - started


def _tail(log: Path, lines: int = 15) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def _genlab_side(
    spec: str, overrides: dict[str, str], workdir: Path, log: Path, xla_flags: str = ""
) -> dict:
    """Train `spec` with `genlab train` (extra `xla_flags`); summarise its metrics.jsonl."""
    command = [sys.executable, "-m", "launch.cli", "train", "--config", spec]
    command += ["--workdir", str(workdir)]
    command += [f"--config.{k}={v}" for k, v in overrides.items()]
    code, started, seconds = _run(command, log, xla_flags)
    result: dict[str, Any] = {"command": " ".join(command[1:]), "exit_code": code}
    if xla_flags:
        result["extra_xla_flags"] = xla_flags
    if code:
        return {**result, "error": _tail(log)}
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    windows = [r for r in records if "perf/step_time_s" in r][1:]  # first: warm-up
    ms = 1000 * statistics.median(r["perf/step_time_s"] for r in windows)
    evals = [
        {
            "step": r["step"],
            "val_loss": round(r["eval/loss"], 4),
            "wall_s": round(r["time"] - started, 2),
        }
        for r in records
        if "eval/loss" in r
    ]
    best = min(evals, key=lambda e: e["val_loss"])
    compile_s = next(r["perf/compile_time_s"] for r in records if "perf/compile_time_s" in r)
    return {
        **result,
        "ms_per_iter_median": round(ms, 2),
        "ms_per_iter_min_max": [
            round(1000 * min(r["perf/step_time_s"] for r in windows), 2),
            round(1000 * max(r["perf/step_time_s"] for r in windows), 2),
        ],
        "tokens_per_s": round(statistics.median(r["perf/tokens_per_s"] for r in windows), 1),
        "mfu": round(statistics.median(r["perf/mfu"] for r in windows if "perf/mfu" in r), 4)
        if any("perf/mfu" in r for r in windows)
        else None,
        "compile_s": round(compile_s, 2),
        "process_wall_s": round(seconds, 2),
        "evals": evals,
        "best_val_loss": best["val_loss"],
        "best_val_step": best["step"],
        "wall_s_to_best_val": best["wall_s"],
        "final_val_loss": evals[-1]["val_loss"],
        "windows": len(windows),
    }


def _pytorch_side(preset: str, device: str, iters: int | None, data: str, out: Path, log: Path):
    command = [sys.executable, "benchmarks/pytorch_reference.py", "--preset", preset]
    command += ["--device", device, "--compile", "--gelu", "tanh", "--data", data]
    command += ["--out", str(out)] + (["--iters", str(iters)] if iters else [])
    code, started, seconds = _run(command, log)
    result: dict[str, Any] = {"command": " ".join(command[1:]), "exit_code": code}
    if code:
        return {**result, "error": _tail(log)}
    ref = json.loads(out.read_text())
    for e in ref["evals"]:  # from this process's start, as for genlab
        e["wall_s"] = round(e.pop("unix_time") - started, 2)
    keys = (
        "ms_per_iter_median", "ms_per_iter_min_max", "tokens_per_s", "mfu", "mode",
        "precision", "first_window_ms_per_iter", "evals", "best_val_loss", "best_val_step",
        "final_val_loss_during", "parameters", "peak_gpu_mib",
    )  # fmt: skip
    summary = {k: ref.get(k) for k in keys}
    best = min(ref["evals"], key=lambda e: e["val_loss"]) if ref["evals"] else None
    summary["wall_s_to_best_val"] = best and best["wall_s"]
    return {**result, **summary, "process_wall_s": round(seconds, 2)}


def _verdict(parts: dict[str, dict]) -> dict[str, Any]:
    """Each target of the issue, with the measured numbers beside it."""
    out: dict[str, Any] = {}
    recipe = parts.get("recipe", {})
    g, t = recipe.get("genlab", {}), recipe.get("pytorch", {})
    if "ms_per_iter_median" in g and "ms_per_iter_median" in t:
        out["recipe_ms_ratio_genlab_over_pytorch"] = round(
            g["ms_per_iter_median"] / t["ms_per_iter_median"], 3
        )
        out["recipe_genlab_at_or_below_pytorch_ms"] = (
            g["ms_per_iter_median"] <= t["ms_per_iter_median"]
        )
    if "best_val_loss" in g:
        out["recipe_genlab_best_val_at_most_1.47"] = (
            g["best_val_loss"] <= TARGETS["recipe_best_val_at_most"]
        )
    gpt2 = parts.get("gpt2", {})
    g, t = gpt2.get("genlab", {}), gpt2.get("pytorch", {})
    if g.get("mfu") is not None:
        out["gpt2_genlab_mfu_at_least_0.50"] = g["mfu"] >= TARGETS["gpt2_mfu_at_least"]
    if "ms_per_iter_median" in g and "ms_per_iter_median" in t:
        out["gpt2_ms_ratio_genlab_over_pytorch"] = round(
            g["ms_per_iter_median"] / t["ms_per_iter_median"], 3
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--steps", type=int, default=5000, help="recipe steps (both sides)")
    parser.add_argument("--gpt2_steps", type=int, default=60)
    parser.add_argument("--parts", default="recipe,gpt2")
    parser.add_argument("--sides", default="pytorch,genlab")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="PyTorch's")
    parser.add_argument("--smoke", action="store_true", help="a few steps of every stage")
    parser.add_argument(
        "--genlab_override",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra --config.KEY=VALUE for both genlab runs",
    )
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="PART:NAME:K=V,K=V",
        help="an extra genlab-only row of PART (recipe or gpt2) with these config overrides, "
        "for ablations; an item XLA_FLAGS=--flag=value adds an XLA flag instead",
    )
    parser.add_argument("--logs", default="", help="keep the runs' logs here")
    parser.add_argument("--out", default=str(REPO / "benchmarks/results/gpu_lm.json"))
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="gpu_lm_"))
    logs = Path(args.logs) if args.logs else work
    logs.mkdir(parents=True, exist_ok=True)
    extra = dict(o.split("=", 1) for o in args.genlab_override)
    steps, gpt2_steps = (40, 20) if args.smoke else (args.steps, args.gpt2_steps)
    recipe = {
        "data.path": args.data,
        "train.steps": str(steps),
        "optim.decay_steps": str(steps),
        "train.progress_bar": "false",
        **extra,
    }
    if args.smoke:
        recipe.update(
            {
                "train.eval_every": "20",
                "train.eval_batches": "4",
                "train.log_every": "10",
                "sample.num_tokens": "8",
            }
        )
    gpt2 = {"train.steps": str(gpt2_steps), **extra}
    gpt2_spec = "experiments/gpt2_synthetic.py:" + ("test" if args.smoke else "124m")
    result: dict[str, Any] = {
        "benchmark": "genlab vs PyTorch (nanoGPT's set-up) on one GPU, same process order",
        "gpu": _gpu(),
        "versions": _versions(),
        "python": sys.version.split()[0],
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "smoke": args.smoke,
        "targets": TARGETS,
        "parts": {},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    plan = {
        "recipe": ("experiments/shakespeare_char.py:gpu", recipe, "gpu", steps),
        "gpt2": (gpt2_spec, gpt2, "gpt2", gpt2_steps),
    }
    for part in filter(None, args.parts.split(",")):
        spec, overrides, preset, iters = plan[part]
        result["parts"][part] = {"genlab_config": spec}
        for side in filter(None, args.sides.split(",")):
            print(f"{part} / {side}", flush=True)
            if side == "genlab":
                summary = _genlab_side(
                    spec, overrides, work / f"{part}_genlab", logs / f"{part}_genlab.log"
                )
            else:
                summary = _pytorch_side(
                    preset,
                    args.device,
                    iters,
                    args.data,
                    work / f"{part}_pytorch.json",
                    logs / f"{part}_pytorch.log",
                )
            result["parts"][part][side] = summary
            result["verdict"] = _verdict(result["parts"])
            out.write_text(json.dumps(result, indent=2) + "\n")
    for variant in args.variant:
        part, name, settings = [*variant.split(":", 2), "", ""][:3]
        if part not in plan or not name:
            parser.error(
                f"--variant {variant!r}: expected PART:NAME:K=V,... with PART in {list(plan)}"
            )
        spec, base, _, _ = plan[part]
        items = [kv.split("=", 1) for kv in settings.split(",") if kv]
        flags = " ".join(v for k, v in items if k == "XLA_FLAGS")
        overrides = dict(base, **{k: v for k, v in items if k != "XLA_FLAGS"})
        print(f"{part} variant {name} / genlab", flush=True)
        summary = _genlab_side(
            spec, overrides, work / f"{part}_{name}", logs / f"{part}_{name}_genlab.log", flags
        )
        summary["overrides"] = settings
        result["parts"].setdefault(f"{part}_variants", {})[name] = summary
        out.write_text(json.dumps(result, indent=2) + "\n")
    print(
        json.dumps(
            {
                p: {
                    s: {k: v for k, v in r.items() if k not in ("evals", "command")}
                    for s, r in d.items()
                    if isinstance(r, dict)
                }
                for p, d in result["parts"].items()
            },
            indent=2,
        )
    )
    print(json.dumps(result.get("verdict", {}), indent=2))


if __name__ == "__main__":
    main()
