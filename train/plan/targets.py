"""The machines `genlab plan` compiles for: TPU slices described by libtpu (no TPU needed), or
N simulated XLA:CPU devices standing in for anything else, and the device figures the roofline
estimate uses."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from train.errors import UserError

GIB = 1024**3


@dataclass(frozen=True)
class DeviceSpec:
    """One accelerator as its vendor states it. `network` is the per-device bandwidth one way
    (bytes/s) between devices of one slice or node: ICI for TPUs, NVLink for GPUs."""

    name: str
    peak_flops: float  # dense bf16 FLOP/s
    hbm_bytes: float
    hbm_bandwidth: float  # bytes/s
    network: float  # bytes/s, one direction
    source: str


# Per chip for TPUs (one JAX device per chip on v5e/v5p/v6e), per GPU for NVIDIA.
DEVICE_SPECS: dict[str, DeviceSpec] = {
    spec.name: spec
    for spec in (
        DeviceSpec(
            "v4", 275e12, 32 * GIB, 1200e9, 300e9,
            "cloud.google.com/tpu/docs/v4: 275 TFLOPs bf16, 32 GiB HBM2 at 1200 GBps, "
            "ICI 2400 Gbps",
        ),
        DeviceSpec(
            "v5e", 197e12, 16 * GIB, 819e9, 200e9,
            "cloud.google.com/tpu/docs/v5e: 197 TFLOPs bf16, 16 GiB HBM2 at 819 GBps, "
            "ICI 1600 Gbps (400 GBps both ways)",
        ),
        DeviceSpec(
            "v5p", 459e12, 95 * GIB, 2765e9, 600e9,
            "cloud.google.com/tpu/docs/v5p: 459 TFLOPs bf16, 95 GiB HBM2e at 2765 GBps, "
            "ICI 4800 Gbps (1200 GBps both ways)",
        ),
        DeviceSpec(
            "v6e", 918e12, 32 * GIB, 1640e9, 448e9,
            "cloud.google.com/tpu/docs/v6e: 918 TFLOPs bf16, 32 GiB HBM at 1640 GBps, "
            "ICI 3584 Gbps",
        ),
        DeviceSpec(
            "a100", 312e12, 80e9, 2039e9, 300e9,
            "NVIDIA A100 datasheet (SXM 80GB): 312 TFLOPS bf16 dense, 2039 GB/s, "
            "NVLink 600 GB/s both ways",
        ),
        DeviceSpec(
            "h100", 989e12, 80e9, 3350e9, 450e9,
            "NVIDIA H100 datasheet (SXM): 989 TFLOPS bf16 dense, 80 GB HBM3 at 3.35 TB/s, "
            "NVLink 900 GB/s both ways",
        ),
        DeviceSpec(
            "h200", 989e12, 141e9, 4800e9, 450e9,
            "NVIDIA H200 datasheet (SXM): 989 TFLOPS bf16 dense, 141 GB HBM3e at 4.8 TB/s, "
            "NVLink 900 GB/s both ways",
        ),
    )
}  # fmt: skip

# Cores (v4, v5p: two per chip) or chips (v5e, v6e) in the slice name -> libtpu's chip grid.
_TPU_CORES_PER_CHIP = {"v4": 2, "v5p": 2, "v5e": 1, "v6e": 1}
_GRIDS_3D = {
    4: "2x2x1", 8: "2x2x2", 16: "2x2x4", 32: "2x4x4", 64: "4x4x4", 128: "4x4x8",
    256: "4x8x8", 512: "8x8x8", 1024: "8x8x16", 2048: "8x16x16", 4096: "16x16x16",
}  # fmt: skip
_GRIDS_2D = {
    1: "1x1", 4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8", 128: "8x16", 256: "16x16",
}  # fmt: skip
_SLICE = re.compile(r"^(v4|v5p|v5e|v6e)-(\d+)$")
_CPU = re.compile(r"^cpu:(\d+)$")
TOPOLOGY_HELP = "a TPU slice such as v5p-256, v5e-256, v4-8, v6e-64, or cpu:N (N simulated devices)"


@dataclass
class Target:
    """What the plan compiles for: its devices, which kind they stand for, and whether the
    memory figures are the real compiler's (TPU) or XLA:CPU's (simulated)."""

    topology: str
    devices: list[Any]
    spec: DeviceSpec | None
    simulated: bool


def tpu_topology_name(topology: str) -> tuple[str, str]:
    """('v5p', 'v5p:4x4x8') for 'v5p-256': the slice name as Cloud TPU writes it (cores for
    v4/v5p, chips for v5e/v6e) turned into the chip grid libtpu expects."""
    match = _SLICE.match(topology)
    if not match:
        raise UserError(f"--topology={topology}: unknown; allowed: {TOPOLOGY_HELP}")
    kind, count = match.group(1), int(match.group(2))
    chips, leftover = divmod(count, _TPU_CORES_PER_CHIP[kind])
    grids = _GRIDS_3D if kind in ("v4", "v5p") else _GRIDS_2D
    if leftover or chips not in grids:
        unit = _TPU_CORES_PER_CHIP[kind]
        sizes = ", ".join(f"{kind}-{c * unit}" for c in grids)
        raise UserError(f"--topology={topology}: no such {kind} slice; allowed: {sizes}")
    return kind, f"{kind}:{grids[chips]}"


def device_spec(name: str) -> DeviceSpec:
    if name not in DEVICE_SPECS:
        raise UserError(f"--device={name}: unknown; allowed: {', '.join(DEVICE_SPECS)}")
    return DEVICE_SPECS[name]


def resolve(topology: str, device: str | None = None) -> Target:
    """The devices of `topology`; `device` names the spec a `cpu:N` plan is measured against
    (a TPU slice brings its own)."""
    import jax

    cpu = _CPU.match(topology)
    if cpu:
        count = int(cpu.group(1))
        have = jax.devices("cpu")
        if count < 1 or count > len(have):
            raise UserError(
                f"--topology={topology}: this process has {len(have)} CPU devices; "
                f"allowed: cpu:1 to cpu:{len(have)}"
            )
        spec = device_spec(device) if device else None
        return Target(topology, list(have[:count]), spec, simulated=True)
    kind, name = tpu_topology_name(topology)
    if device and device != kind:
        raise UserError(f"--device={device}: --topology={topology} is a {kind} slice")
    devices = _tpu_devices(topology, name)
    return Target(topology, devices, DEVICE_SPECS[kind], simulated=False)


def _tpu_devices(topology: str, name: str) -> list[Any]:
    from jax.experimental import topologies

    try:
        import libtpu  # noqa: F401  (only checks that the compiler is there)
    except ImportError:
        raise UserError(
            f"--topology={topology} needs libtpu to compile for TPUs: pip install -e '.[plan]' "
            "(or plan on cpu:N)"
        ) from None
    try:
        return list(topologies.get_topology_desc(name, "tpu").devices)
    except Exception as error:  # libtpu reports its refusal as a runtime error
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserError(f"--topology={topology}: libtpu refused {name!r}: {first}") from None
