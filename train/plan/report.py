"""A plan (see `train.plan.make_plan`) as the few lines a person reads before launching."""

from __future__ import annotations

from typing import Any

GIB = 1024**3
SHOWN_PARAMETERS = 12  # rows of the sharding table printed; the JSON has them all


def _bytes(value: float | None) -> str:
    if value is None:
        return "-"
    for unit, size in (("GiB", GIB), ("MiB", 1024**2), ("KiB", 1024)):
        if value >= size:
            return f"{value / size:.2f} {unit}"
    return f"{value:.0f} B"


def _seconds(value: float) -> str:
    return f"{value * 1e3:.1f} ms" if value < 1 else f"{value:.2f} s"


def text_report(plan: dict[str, Any]) -> str:
    m = plan["memory_per_device"]
    mesh = " ".join(f"{axis}={size}" for axis, size in plan["mesh"].items())
    compiler = "XLA:CPU (simulated devices)" if plan["simulated"] else "libtpu"
    unit = next(k for k in plan if k.endswith("_per_step") and not k.startswith("network"))
    lines = [
        f"plan: {plan.get('config', '')} on {plan['topology']}: {plan['devices']} x "
        f"{plan['device_kind']}, compiled by {compiler} in {plan['compile_seconds']:.1f} s",
        f"mesh {mesh}; {plan['parameters']:,} parameters; "
        f"{plan[unit]:,.0f} {unit.removesuffix('_per_step')} per step",
        "memory per device: parameters {}, optimizer state {}, batch {}, activations and "
        "temporaries {}, peak {}".format(
            _bytes(m["parameters"]),
            _bytes(m["optimizer_state"]),
            _bytes(m["batch"]),
            _bytes(m["activations_and_temporaries"]),
            _bytes(m["peak"]),
        ),
    ]
    if "compiler_message" in m:  # the compiler would not build it: its figures, not ours
        lines.append(
            f"  DOES NOT FIT: the compiler needs {_bytes(m['activations_and_temporaries'])} of "
            f"temporaries where {_bytes(m['compiler_available'])} are free, short by "
            f"{_bytes(m['shortfall'])} ({m['compiler_message']})"
        )
        return "\n".join(lines)
    if "fits" in m:
        verdict = "fits" if m["fits"] else f"DOES NOT FIT: short by {_bytes(m['shortfall'])}"
        lines.append(f"  of {_bytes(m['hbm'])} per device: {verdict}")
    if plan["simulated"]:
        lines.append("  (memory as XLA:CPU lays it out; a GPU's compiler will differ)")
    flops = plan["flops"]
    if flops["compiled_total"] is not None:
        model = f"{flops['model']:.3g}" if flops["model"] else "-"
        lines.append(
            f"FLOPs per step: compiled {flops['compiled_total']:.3g} "
            f"({flops['compiled_per_device']:.3g} per device); the task's model count {model}"
        )
    if plan["collectives"]:
        by_kind: dict[str, list[float]] = {}
        for c in plan["collectives"]:
            count, moved = by_kind.setdefault(c["kind"], [0, 0.0])
            by_kind[c["kind"]] = [count + c["count"], moved + c["count"] * c["bytes"]]
        parts = [f"{kind} x{n} ({_bytes(moved)})" for kind, (n, moved) in by_kind.items()]
        total = _bytes(plan["network_bytes_per_device_per_step"])
        lines.append(f"collectives per step, per device ({total}): " + "; ".join(parts))
    else:
        lines.append("collectives per step: none")
    estimate = plan.get("estimate")
    if estimate:
        mfu = ""
        if "mfu_overlapped" in estimate:
            mfu = f"; MFU {estimate['mfu_serial']:.0%} to {estimate['mfu_overlapped']:.0%}"
        lines.append(
            f"roofline on {estimate['device']}: compute {_seconds(estimate['compute_seconds'])}, "
            f"HBM {_seconds(estimate['hbm_seconds'])}, network "
            f"{_seconds(estimate['network_seconds'])} -> step "
            f"{_seconds(estimate['step_seconds_overlapped'])} (all overlapped) to "
            f"{_seconds(estimate['step_seconds_serial'])} (none){mfu}"
        )
    lines.append(f"sharding (first {SHOWN_PARAMETERS} of {len(plan['sharding'])} parameters):")
    for row in plan["sharding"][:SHOWN_PARAMETERS]:
        pairs = zip(row["logical"], row["mesh"], strict=True)
        axes = ", ".join(f"{logical or '-'}->{mesh or '-'}" for logical, mesh in pairs)
        lines.append(f"  {row['path']} {row['shape']} [{axes}] per device {row['per_device']}")
    return "\n".join(lines)
