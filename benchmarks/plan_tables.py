"""The README's `genlab plan` tables: GPT-2 small, Llama-3.2-1B and Llama-3-8B compiled for a
TPU v5p-256 slice (FSDP only, and FSDP x tensor) and for 8 simulated CPU devices, plus how the
parameter bytes per device fall as FSDP grows over 1..8 simulated devices.

    pip install -e ".[plan]"     # libtpu, for the v5p rows
    python benchmarks/plan_tables.py [--only cpu]

Each plan is saved whole in benchmarks/results/plans/ (a finished one is not redone) and the
summary in benchmarks/results/plan_tables.json, printed as Markdown.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from typing import Any

from common import REPO, genlab

RESULTS = REPO / "benchmarks" / "results"
PLANS = RESULTS / "plans"
GIB = 1024**3

LLAMA_2K = ["--config.data.block_size=2048", "--config.train.batch_size=2048"]
MODELS = {  # name -> (config, overrides every plan of it shares)
    "GPT-2 small": ("experiments/gpt2_synthetic.py:124m", ["--config.train.batch_size=512"]),
    # Llama's 4M-token step as 2,048 windows of 2,048 tokens: at its 8,192-token windows libtpu
    # refuses XLA's attention (the 8,192^2 scores overflow a fusion's scoped VMEM; a fused
    # flash-attention kernel is what TPU runs at that length, and genlab has none yet).
    "Llama-3.2-1B": ("experiments/llama.py:1b", LLAMA_2K),
    "Llama-3-8B": ("experiments/llama.py:8b", LLAMA_2K),
}
MESHES = {  # name -> (topology, mesh overrides)
    "v5p-256 FSDP": ("v5p-256", ["--config.mesh.data=1", "--config.mesh.fsdp=128"]),
    "v5p-256 FSDP x TP4": (
        "v5p-256",
        ["--config.mesh.data=1", "--config.mesh.fsdp=32", "--config.mesh.tensor=4"],
    ),
    "cpu:8 FSDP (as H100s)": ("cpu:8", ["--config.mesh.data=1", "--config.mesh.fsdp=8"]),
}
CPU_BATCH = ["--config.train.batch_size=16"]  # cpu:8 rows: 2 sequences per device


def plan(name: str, spec: str, topology: str, flags: list[str]) -> dict[str, Any]:
    out = PLANS / f"{name}.json"
    if not out.is_file():
        device = ["--device", "h100"] if topology.startswith("cpu:") else []
        started = time.perf_counter()
        genlab("plan", "--config", spec, "--topology", topology, *device, *flags, "--out", str(out))
        print(f"{name}: {time.perf_counter() - started:.0f} s", flush=True)
    return json.loads(out.read_text())


def summary(plan_: dict[str, Any]) -> dict[str, Any]:
    m, e = plan_["memory_per_device"], plan_.get("estimate", {})
    if plan_["flops"] is None:  # the compiler refused it for lack of memory
        return {
            "parameters": plan_["parameters"],
            "mesh": plan_["mesh"],
            "params_gib": m["parameters"] / GIB,
            "optimizer_gib": m["optimizer_state"] / GIB,
            "temporaries_gib": m["activations_and_temporaries"] / GIB,
            "shortfall_gib": m["shortfall"] / GIB,
            "fits": False,
            "compiler_message": m["compiler_message"],
            "simulated": plan_["simulated"],
        }
    return {
        "parameters": plan_["parameters"],
        "mesh": plan_["mesh"],
        "tokens_per_step": plan_.get("tokens_per_step"),
        "params_gib": m["parameters"] / GIB,
        "optimizer_gib": m["optimizer_state"] / GIB,
        "temporaries_gib": m["activations_and_temporaries"] / GIB,
        "peak_gib": m["peak"] / GIB,
        "hbm_gib": m["hbm"] / GIB if m.get("hbm") else None,
        "fits": m.get("fits"),
        "network_gib_per_step": plan_["network_bytes_per_device_per_step"] / GIB,
        "compiled_flops": plan_["flops"]["compiled_total"],
        "model_flops": plan_["flops"]["model"],
        "step_s_overlapped": e.get("step_seconds_overlapped"),
        "step_s_serial": e.get("step_seconds_serial"),
        "mfu_overlapped": e.get("mfu_overlapped"),
        "mfu_serial": e.get("mfu_serial"),
        "compile_s": plan_["compile_seconds"],
        "simulated": plan_["simulated"],
    }


def markdown(rows: dict[str, dict[str, Any]]) -> str:
    lines = [
        "| model, target | params/dev GiB | opt/dev GiB | temps GiB | peak GiB | fits | "
        "net GiB/step | compiled/model FLOPs | step s | MFU |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        if "compiler_message" in r:
            lines.append(
                f"| {name} | {r['params_gib']:.3f} | {r['optimizer_gib']:.3f} | "
                f"{r['temporaries_gib']:.2f} | - | no: short by {r['shortfall_gib']:.1f} | "
                "- | - | - | - |"
            )
            continue
        ratio = r["compiled_flops"] / r["model_flops"] if r["model_flops"] else float("nan")
        step = f"{r['step_s_overlapped']:.2f}-{r['step_s_serial']:.2f}"
        mfu = f"{r['mfu_serial']:.0%}-{r['mfu_overlapped']:.0%}"
        fits = {True: "yes", False: "no", None: "-"}[r["fits"]]
        lines.append(
            f"| {name} | {r['params_gib']:.3f} | {r['optimizer_gib']:.3f} | "
            f"{r['temporaries_gib']:.2f} | {r['peak_gib']:.2f} | {fits} | "
            f"{r['network_gib_per_step']:.2f} | {ratio:.2f} | {step} | {mfu} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=("cpu", "tpu"), default=None)
    args = parser.parse_args()
    PLANS.mkdir(parents=True, exist_ok=True)
    rows: dict[str, dict[str, Any]] = {}
    for model, (spec, shared) in MODELS.items():
        for mesh, (topology, flags) in MESHES.items():
            is_cpu = topology.startswith("cpu:")
            if args.only and args.only != ("cpu" if is_cpu else "tpu"):
                continue
            name = re.sub(r"[^\w.-]+", "_", f"{model} {mesh}").strip("_")
            extra = CPU_BATCH if is_cpu else []
            rows[f"{model}, {mesh}"] = summary(plan(name, spec, topology, shared + flags + extra))
    scaling: dict[int, Any] = {}
    if args.only != "tpu":
        spec, shared = MODELS["GPT-2 small"]
        for n in (1, 2, 4, 8):
            flags = [*shared, *CPU_BATCH, "--config.mesh.data=1", f"--config.mesh.fsdp={n}"]
            result = plan(f"GPT-2_small_fsdp{n}_cpu", spec, f"cpu:{n}", flags)
            scaling[n] = result["memory_per_device"]["parameters"]
        scaling = {
            n: {"bytes": b, "times_n_over_1": b * n / scaling[1]} for n, b in scaling.items()
        }
    from importlib.metadata import PackageNotFoundError, version

    from train.metadata import collect, cpu_name

    try:
        libtpu = version("libtpu")
    except PackageNotFoundError:
        libtpu = None
    record = {
        "plans": rows,
        "fsdp_parameter_bytes_per_device": scaling,
        "compiled_on": {"cpu": cpu_name(), "libtpu": libtpu},
        "environment": collect(sys.argv),
    }
    path = RESULTS / ("plan_tables.json" if not args.only else f"plan_tables_{args.only}.json")
    path.write_text(json.dumps(record, indent=1) + "\n")
    print(markdown(rows))
    for n, s in scaling.items():
        print(
            f"fsdp={n}: {s['bytes'] / 2**20:.1f} MiB per device, x{n} = {s['times_n_over_1']:.3f}"
        )


if __name__ == "__main__":
    main()
