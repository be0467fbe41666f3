"""Where a train step's time goes: `python benchmarks/gpu_profile.py --config FILE.py:VARIANT
[--config.a.b=v ...] [--steps 50] [--trace_steps 10] [--out DIR]`.

Builds the trainer's own compiled step for the config and measures, each over --steps steps:
  device_ms    the compiled step alone on one batch, one sync at the end: what the device needs
  dispatch_ms  how long the host takes to enqueue a step (the loop returns before the device is
               done unless the host is the bottleneck)
  batch_ms     the host's batch work alone (the task's rows, placed on the devices)
  loop_ms      the trainer's per-step work together: new batch, step, metrics kept
and a jax.profiler trace of --trace_steps loop steps, summarised per device stream (kernels and
busy time per step, the kernels that take longest) and for the host's Python (the functions that
take longest). Writes profile.json and the trace under --out. Runs on any backend; on CPU the
'device' is XLA's CPU client.
"""

from __future__ import annotations

import argparse
import collections
import glob
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from launch.config import config_from_args, split_config_args  # noqa: E402


def _timed_loop(run_step, steps: int) -> tuple[float, float]:
    """(ms per step until the last step returned, ms per step until the device finished)."""
    import jax

    start = time.perf_counter()
    out = None
    for step in range(steps):
        out = run_step(step)
    dispatched = time.perf_counter()
    jax.block_until_ready(out)
    done = time.perf_counter()
    return 1000 * (dispatched - start) / steps, 1000 * (done - start) / steps


def _intervals_union_ns(events: list[Any]) -> float:
    spans = sorted((e.start_ns, e.start_ns + e.duration_ns) for e in events)
    total, end = 0.0, float("-inf")
    for lo, hi in spans:
        if hi <= end:
            continue
        total += hi - max(lo, end)
        end = hi
    return total


# Kernel families by name, for the per-step breakdown (first match wins).
KERNEL_KINDS = (
    ("attention", ("sdpa", "flash", "fmha", "cudnn")),
    ("matmul", ("nvjet", "gemm", "cutlass", "xmma", "cublas", "triton_dot")),
    ("scatter/gather", ("scatter", "gather")),
    ("reduction", ("reduce",)),
    ("copy/convert", ("copy", "convert", "transpose", "memset", "memcpy")),
)


def kernel_kind(name: str) -> str:
    lowered = name.lower()
    for kind, needles in KERNEL_KINDS:
        if any(n in lowered for n in needles):
            return kind
    return "elementwise/other"


def summarize_trace(trace_dir: Path, steps: int, top: int = 40) -> dict[str, Any]:
    """Per device line: events and busy ms per step, top events; host Python: top functions."""
    from jax.profiler import ProfileData

    paths = sorted(glob.glob(str(trace_dir / "**" / "*.xplane.pb"), recursive=True))
    if not paths:
        return {"error": f"no .xplane.pb under {trace_dir}"}
    data = ProfileData.from_file(paths[-1])
    device_lines, host = [], []
    for plane in data.planes:
        for line in plane.lines:
            events = list(line.events)
            if not events:
                continue
            if plane.name.startswith("/device:"):
                by_name: dict[str, list[float]] = collections.defaultdict(lambda: [0.0, 0])
                for e in events:
                    by_name[e.name][0] += e.duration_ns
                    by_name[e.name][1] += 1
                ranked = sorted(by_name.items(), key=lambda kv: -kv[1][0])[:top]
                kinds: dict[str, float] = collections.defaultdict(float)
                for name, (duration, _) in by_name.items():
                    kinds[kernel_kind(name)] += duration
                first = min(e.start_ns for e in events)
                last = max(e.start_ns + e.duration_ns for e in events)
                device_lines.append(
                    {
                        "plane": plane.name,
                        "line": line.name,
                        "events_per_step": round(len(events) / steps, 1),
                        "summed_ms_per_step": round(
                            sum(e.duration_ns for e in events) / 1e6 / steps, 3
                        ),
                        "busy_ms_per_step": round(_intervals_union_ns(events) / 1e6 / steps, 3),
                        "span_ms_per_step": round((last - first) / 1e6 / steps, 3),
                        "ms_per_step_by_kind": {
                            k: round(v / 1e6 / steps, 3)
                            for k, v in sorted(kinds.items(), key=lambda kv: -kv[1])
                        },
                        "top": [
                            {
                                "name": n[:120],
                                "ms_per_step": round(d / 1e6 / steps, 3),
                                "count_per_step": round(c / steps, 1),
                            }
                            for n, (d, c) in ranked
                        ],
                    }
                )
            elif plane.name.startswith("/host:CPU") and "python" in line.name.lower():
                host.extend(events)
    totals: dict[str, float] = collections.defaultdict(float)
    for e in host:
        totals[e.name] += e.duration_ns
    host_top = sorted(totals.items(), key=lambda kv: -kv[1])[: 3 * top]
    return {
        "xplane": paths[-1],
        "device_lines": device_lines,
        "host_python_top_ms_per_step": [
            {"name": n[:140], "ms_per_step": round(d / 1e6 / steps, 3)} for n, d in host_top
        ],
    }


def profile(spec: str, overrides: dict[str, str], steps: int, trace_steps: int, out: Path) -> dict:
    """Measure the compiled step of config `spec` (see the module docstring)."""
    config = config_from_args(spec, overrides)
    import jax

    from train import partitioning
    from train.trainer import Trainer, place_state

    workdir = Path(tempfile.mkdtemp(prefix="gpu_profile_"))
    trainer = Trainer(config, workdir)
    task = trainer.task
    state, placement, _ = place_state(task, trainer.mesh, config.seed, None)
    train_step, _, compile_s = trainer.compile_steps(state, placement)

    def new_batch(step: int):
        return partitioning.global_batch(task.train_batch(step), placement.batch)

    fixed = new_batch(0)
    holder = {"state": state}

    def device_step(step: int):
        holder["state"], metrics = train_step(holder["state"], fixed)
        return metrics

    pending: list[Any] = []

    def loop_step(step: int):
        holder["state"], metrics = train_step(holder["state"], new_batch(step))
        pending.append(metrics)
        return metrics

    _timed_loop(device_step, 3)  # warm-up
    dispatch_ms, device_ms = _timed_loop(device_step, steps)
    start = time.perf_counter()
    for step in range(steps):
        jax.block_until_ready(new_batch(step))
    batch_ms = 1000 * (time.perf_counter() - start) / steps
    _, loop_ms = _timed_loop(loop_step, steps)
    jax.device_get(pending)
    trace_dir = out / "trace"
    with jax.profiler.trace(str(trace_dir)):
        _timed_loop(loop_step, trace_steps)
    result = {
        "config": spec,
        "overrides": overrides,
        "device": jax.devices()[0].device_kind,
        "backend": jax.default_backend(),
        "jax": jax.__version__,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "compile_s": round(compile_s, 2),
        "steps": steps,
        "device_ms": round(device_ms, 3),
        "dispatch_ms": round(dispatch_ms, 3),
        "batch_ms": round(batch_ms, 3),
        "loop_ms": round(loop_ms, 3),
        "flops_per_step": task.flops_per_step(holder["state"]),
        "trace": summarize_trace(trace_dir, trace_steps),
    }
    (out / "profile.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--trace_steps", type=int, default=10)
    parser.add_argument("--out", default=str(REPO / "runs" / "gpu_profile"))
    spec, overrides, rest = split_config_args(sys.argv[1:])
    args = parser.parse_args(rest)
    if spec is None:
        parser.error("--config FILE.py:VARIANT is required")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = profile(spec, overrides, args.steps, args.trace_steps, out)
    short = {k: v for k, v in result.items() if k != "trace"}
    print(json.dumps(short, indent=2))
    for line in result["trace"].get("device_lines", []):
        print(
            f"{line['line']}: {line['events_per_step']} events/step, "
            f"busy {line['busy_ms_per_step']} ms/step, span {line['span_ms_per_step']} ms/step"
        )
        for entry in line["top"][:8]:
            print(
                f"    {entry['ms_per_step']:8.3f} ms  x{entry['count_per_step']:<6} {entry['name']}"
            )
    print("host python:")
    for entry in result["trace"].get("host_python_top_ms_per_step", [])[:25]:
        print(f"    {entry['ms_per_step']:8.3f} ms  {entry['name']}")


if __name__ == "__main__":
    main()
