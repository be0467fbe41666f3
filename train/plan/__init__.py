"""`genlab plan`: compile the real train step for a machine this one is not, and say what it
would cost there: memory per device, how every parameter is sharded, the collectives and their
bytes, FLOPs, and a roofline step time and MFU.

The step is the one `genlab train` runs (`train.trainer.lower_train_step`) on abstract inputs
(`jax.eval_shape`), so nothing of the model is allocated. TPU slices are compiled by libtpu's own
compiler against its description of the slice (`jax.experimental.topologies`); `cpu:N` compiles
for N simulated XLA:CPU devices, whose memory figures are XLA:CPU's, not a GPU's.
"""

from __future__ import annotations

import math
import re
import time
from typing import Any

import flax.linen as nn
import jax
import ml_collections

from train import partitioning
from train.checkpoint import abstract_with_shardings
from train.data.splits import TRAINING
from train.errors import UserError
from train.plan import hlo
from train.plan.targets import Target
from train.tasks import build_task
from train.transfer import Transfer

__all__ = ["make_plan"]


def make_plan(
    config: ml_collections.ConfigDict, target: Target, hbm_bytes: float | None = None
) -> dict[str, Any]:
    """Compile the train step of `config` for `target` and report on it (see the module doc).
    `hbm_bytes` replaces the device's memory size in the fit check."""
    from models.layers import compiling_for
    from train.trainer import abstract_state, lower_train_step

    task = build_task(config, splits=TRAINING)  # one batch gives the inputs' shapes
    mesh = partitioning.make_mesh(config.mesh, target.devices)
    partitioning.check_batch_divides(config.train.batch_size, mesh, config.train.grad_accum)
    boxed, placement = abstract_state(task, mesh, config.seed)
    state = abstract_with_shardings(nn.meta.unbox(boxed), placement.state)
    batch = {
        name: jax.ShapeDtypeStruct(rows.shape, rows.dtype, sharding=placement.batch[name])
        for name, rows in task.train_batch(0).items()
    }
    platform = target.devices[0].platform
    hbm_bytes = hbm_bytes or (target.spec.hbm_bytes if target.spec else None)
    unit, per_step = task.examples_per_step()
    report: dict[str, Any] = {
        "topology": target.topology,
        "devices": len(target.devices),
        "device_kind": target.devices[0].device_kind,
        "simulated": target.simulated,
        "mesh": dict(mesh.shape),
        "parameters": sum(x.size for x in _part(state, "parameters")),
        f"{unit}_per_step": per_step,
        "memory_per_device": _state_memory(state, batch, hbm_bytes),
        "sharding": _sharding_table(boxed, state),
    }
    started = time.perf_counter()
    with compiling_for(platform):
        lowered = lower_train_step(task, placement, Transfer(config), state, batch)
        try:
            compiled = lowered.compile()
        except jax.errors.JaxRuntimeError as error:  # the target's compiler refused the step
            return _refused(report, str(error), hbm_bytes, time.perf_counter() - started)
    report["compile_seconds"] = round(time.perf_counter() - started, 2)
    report["memory_per_device"].update(_compiled_memory(compiled, hbm_bytes))
    cost = _cost(compiled)
    collectives = hlo.collectives(compiled.as_text(), len(target.devices))
    model_flops = task.flops_per_step(state)
    report.update(
        {
            "collectives": [
                {"kind": c.kind, "group": c.group, "count": c.count, "bytes": c.bytes}
                for c in collectives
            ],
            "network_bytes_per_device_per_step": sum(c.count * c.bytes for c in collectives),
            "flops": {
                "compiled_per_device": cost.get("flops"),
                "compiled_total": cost["flops"] * len(target.devices) if "flops" in cost else None,
                "model": model_flops,  # 6 N + 12 L T d per token for a Transformer LM
            },
            "hbm_bytes_accessed_per_device": cost.get("bytes accessed"),
        }
    )
    if target.spec is not None:
        report["estimate"] = _roofline(target, cost, collectives, model_flops)
    return report


# libtpu does not build a program that cannot fit its HBM; it says by how much instead.
_HBM_REFUSAL = re.compile(
    r"Ran out of memory on HBM.*?required for HLO temporaries \(([\d.]+)([KMGT])\).*?"
    r"available HBM \(([\d.]+)([KMGT])\)"
)
_UNITS = {"K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


def _refused(
    report: dict[str, Any], message: str, hbm_bytes: float | None, seconds: float
) -> dict[str, Any]:
    """A plan the target's compiler would not build: when it refused for lack of memory, a
    plan that does not fit, with the compiler's figures; otherwise a one-line error."""
    lines = [line for line in message.splitlines() if line.strip()]
    first = lines[0] if lines else "no message"
    refused = _HBM_REFUSAL.search(message)
    if refused is None:
        raise UserError(f"--topology={report['topology']}: the compiler refused the step: {first}")
    needed = float(refused.group(1)) * _UNITS[refused.group(2)]
    available = float(refused.group(3)) * _UNITS[refused.group(4)]
    memory = report["memory_per_device"]
    memory.update(
        {
            "activations_and_temporaries": int(needed),
            "peak": None,
            "hbm": hbm_bytes,
            "compiler_available": int(available),
            "fits": False,
            "shortfall": int(needed - available),
            "compiler_message": first,
        }
    )
    report.update(
        {
            "compile_seconds": round(seconds, 2),
            "collectives": None,
            "network_bytes_per_device_per_step": None,
            "flops": None,
        }
    )
    return report


def _role(path: tuple) -> str:
    """What a leaf of a train state is, from the field names on its path: every family keeps
    its trained weights under `params` and its optimizer's under `opt_state` (the GAN has two
    of each; an EMA copy is `ema_params`)."""
    names = {_key(k) for k in path}
    if "opt_state" in names:
        return "optimizer_state"
    if "ema_params" in names:
        return "ema"
    return "parameters" if "params" in names else "other"


def _leaves_with_roles(tree: Any, is_leaf: Any = None) -> list[tuple[tuple, str, Any]]:
    flat = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_leaf)[0]
    return [(path, _role(path), leaf) for path, leaf in flat]


def _part(state: Any, role: str) -> list[Any]:
    return [leaf for _, r, leaf in _leaves_with_roles(state) if r == role]


def _per_device_bytes(leaves: list[Any]) -> int:
    """Bytes one device holds of sharded ShapeDtypeStructs."""
    return sum(math.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize for x in leaves)


def _state_memory(state: Any, batch: Any, hbm_bytes: float | None) -> dict[str, Any]:
    """What each device holds before the step runs, from the shardings alone."""
    return {
        "parameters": _per_device_bytes(_part(state, "parameters")),
        "optimizer_state": _per_device_bytes(_part(state, "optimizer_state")),
        "ema_and_other_state": _per_device_bytes(_part(state, "ema") + _part(state, "other")),
        "batch": _per_device_bytes(jax.tree.leaves(batch)),
        "hbm": hbm_bytes,
    }


def _compiled_memory(compiled: Any, hbm_bytes: float | None) -> dict[str, Any]:
    """The compiled executable's own accounting, and whether its peak fits `hbm_bytes`."""
    stats = compiled.memory_analysis()
    arguments = int(stats.argument_size_in_bytes)
    outputs = int(stats.output_size_in_bytes)
    aliased = int(stats.alias_size_in_bytes)
    temporaries = int(stats.temp_size_in_bytes)
    code = int(stats.generated_code_size_in_bytes)
    # Donated state: outputs written over their inputs are not counted twice.
    peak = arguments + outputs - aliased + temporaries + code
    memory: dict[str, Any] = {
        "arguments": arguments,
        "outputs": outputs,
        "aliased": aliased,
        "activations_and_temporaries": temporaries,
        "code": code,
        "peak": peak,
    }
    if hbm_bytes:
        memory["fits"] = peak <= hbm_bytes
        memory["shortfall"] = max(0, peak - int(hbm_bytes))
    return memory


def _cost(compiled: Any) -> dict[str, float]:
    cost = compiled.cost_analysis()
    if isinstance(cost, list):  # older jax: one dict per program
        cost = cost[0] if cost else {}
    return {k: float(v) for k, v in (cost or {}).items() if k in ("flops", "bytes accessed")}


def _sharding_table(boxed: Any, state: Any) -> list[dict[str, Any]]:
    """Every parameter: its shape, logical axes, the mesh axes they map to, per-device shape."""
    is_box = lambda x: isinstance(x, nn.Partitioned)
    boxes = _leaves_with_roles(boxed, is_leaf=is_box)
    leaves = jax.tree.leaves(state)
    rows = []
    for (path, role, box), leaf in zip(boxes, leaves, strict=True):
        if role != "parameters":
            continue
        names = tuple(box.names) if is_box(box) else ()
        rows.append(
            {
                "path": "/".join(_key(k) for k in path if _key(k) != "params"),
                "shape": list(leaf.shape),
                "logical": list(names) + [None] * (leaf.ndim - len(names)),
                "mesh": [_axes(a) for a in _padded(leaf.sharding.spec, leaf.ndim)],
                "per_device": list(leaf.sharding.shard_shape(leaf.shape)),
            }
        )
    return rows


def _key(k: Any) -> str:
    return str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))))


def _padded(spec: Any, ndim: int) -> list[Any]:
    return list(spec) + [None] * (ndim - len(spec))


def _axes(entry: Any) -> str | None:
    if entry is None:
        return None
    return entry if isinstance(entry, str) else "+".join(entry)


def _roofline(
    target: Target, cost: dict[str, float], collectives: list[hlo.Collective], model_flops: Any
) -> dict[str, Any]:
    """Lower bounds on the step time from each resource of one device: its peak FLOP/s, its HBM
    bandwidth and its link bandwidth (ring collectives). Overlapped perfectly, the step takes the
    largest; run one after another, their sum. MFU is the model's FLOPs over that time."""
    spec = target.spec
    assert spec is not None
    devices = len(target.devices)
    compute = cost.get("flops", 0.0) / spec.peak_flops
    memory = cost.get("bytes accessed", 0.0) / spec.hbm_bandwidth
    network = sum(c.count * hlo.ring_seconds(c, spec.network) for c in collectives)
    overlapped = max(compute, memory, network)
    serial = compute + memory + network
    estimate: dict[str, Any] = {
        "device": spec.name,
        "source": spec.source,
        "compute_seconds": compute,
        "hbm_seconds": memory,
        "network_seconds": network,
        "step_seconds_overlapped": overlapped,
        "step_seconds_serial": serial,
    }
    if model_flops and overlapped > 0:
        estimate["mfu_overlapped"] = model_flops / (overlapped * spec.peak_flops * devices)
        estimate["mfu_serial"] = model_flops / (serial * spec.peak_flops * devices)
    return estimate
