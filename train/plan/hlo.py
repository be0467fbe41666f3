"""The collectives of a compiled, SPMD-partitioned program, read from its HLO text: which ones,
how often per step (a collective inside a loop body counts once per iteration) and how many
bytes each moves per device."""

from __future__ import annotations

import math
import re
from collections import defaultdict
from dataclasses import dataclass

KINDS = ("all-gather", "all-reduce", "reduce-scatter", "all-to-all", "collective-permute")
_DTYPE_BYTES = {
    "pred": 1, "s8": 1, "u8": 1, "f8e4m3fn": 1, "f8e5m2": 1, "s16": 2, "u16": 2, "f16": 2,
    "bf16": 2, "s32": 4, "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16,
}  # fmt: skip
_HEADER = re.compile(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s*\(.*\{\s*$")
_INSTRUCTION = re.compile(
    r"^\s*(?:ROOT\s+)?%?[\w.\-]+\s*=\s*(.*?)\s(" + "|".join(KINDS) + r")(-start)?\((.*)$"
)
_ARRAY = re.compile(r"\b([a-z]+\d*(?:e\d+m\d+(?:fn)?)?)\[([\d,]*)\]")
_CALLED = re.compile(
    r"\b(?:body|condition|to_apply|calls|true_computation|false_computation)=%?([\w.\-]+)"
)
_BRANCHES = re.compile(r"branch_computations=\{([^}]*)\}")
_WHILE = re.compile(r"\swhile\(.*condition=%?([\w.\-]+).*body=%?([\w.\-]+)")
_TRIP = re.compile(r'"known_trip_count":\{"n":"(\d+)"\}')
_CONSTANT = re.compile(r"\bconstant\((\d+)\)")
_IOTA_GROUPS = re.compile(r"replica_groups=\[([\d,]+)\]<=")
_LIST_GROUPS = re.compile(r"replica_groups=\{(\{[\d,]*\})")
_MESH_GROUPS = re.compile(r"replica_groups=mesh\[([^\]]*)\]\s*\{([^}]*)\}")


@dataclass
class Collective:
    kind: str
    count: int  # executions per step
    bytes: float  # per device per execution: the whole array the group shares
    group: int  # devices taking part together


def _arrays(text: str) -> list[float]:
    """Bytes of each array type written in `text` (a shape or a tuple of shapes)."""
    sizes = []
    for dtype, dims in _ARRAY.findall(text):
        if dtype in _DTYPE_BYTES:
            shape = [int(d) for d in dims.split(",") if d]
            sizes.append(_DTYPE_BYTES[dtype] * math.prod(shape))
    return sizes


def _group_size(attributes: str, num_devices: int) -> int:
    """Devices per replica group, in any of XLA's three spellings: iota `[groups,size]<=[n]`,
    listed `{{0,1},{2,3}}`, or mesh axes `mesh['a'=4,'b'=2] {'a'}`."""
    meshed = _MESH_GROUPS.search(attributes)
    if meshed:
        sizes = dict(re.findall(r"'([^']+)'=(\d+)", meshed.group(1)))
        return math.prod(int(sizes[a]) for a in re.findall(r"'([^']+)'", meshed.group(2)))
    iota = _IOTA_GROUPS.search(attributes)
    if iota:
        return int(iota.group(1).split(",")[-1])
    listed = _LIST_GROUPS.search(attributes)
    if listed and listed.group(1) != "{}":
        return len(listed.group(1).strip("{}").split(","))
    return num_devices


def _full_bytes(kind: str, asynchronous: bool, result: list[float], group: int) -> float:
    """The size of the array the group shares, from the op's result type."""
    if not result:
        return 0.0
    if asynchronous and kind in ("all-gather", "collective-permute") and len(result) > 1:
        # A start op's result is (operands..., outputs...): the outputs are the second half.
        outputs = result[len(result) // 2 :] if kind == "all-gather" else result[:1]
        return float(sum(outputs))
    if kind == "reduce-scatter":
        return float(sum(result)) * group
    return float(sum(result))


def collectives(hlo: str, num_devices: int) -> list[Collective]:
    """Every collective in the module's text, once per kind, group and size, with how many
    times it runs per step. A while loop's trip count comes from XLA's `known_trip_count`, or
    else the bound its condition compares with (jax's loops count from 0 in steps of 1)."""
    bodies: dict[str, list[str]] = {}
    entry, current = None, None
    for line in hlo.splitlines():
        header = _HEADER.match(line)
        if header:
            current = header.group(1)
            bodies[current] = []
            if line.startswith("ENTRY"):
                entry = current
        elif line.startswith("}"):
            current = None
        elif current is not None:
            bodies[current].append(line)
    if entry is None:
        return []
    times: dict[str, int] = defaultdict(int)
    _count_calls(bodies, entry, 1, times)
    found: dict[tuple[str, int, float], int] = defaultdict(int)
    for name, lines in bodies.items():
        if not times.get(name):
            continue
        for line in lines:
            match = _INSTRUCTION.match(line)
            if not match:
                continue
            result, kind, start, attributes = match.groups()
            group = _group_size(attributes, num_devices)
            size = _full_bytes(kind, bool(start), _arrays(result), group)
            found[(kind, group, size)] += times[name]
    return [Collective(k, n, b, g) for (k, g, b), n in sorted(found.items())]


def _count_calls(bodies: dict[str, list[str]], name: str, times: int, out: dict) -> None:
    out[name] += times
    for line in bodies.get(name, []):
        loop = _WHILE.search(line)
        if loop:
            condition, body = loop.groups()
            _count_calls(bodies, condition, times, out)
            _count_calls(bodies, body, times * _trip_count(line, bodies.get(condition, [])), out)
            continue
        called = _CALLED.findall(line)
        branches = _BRANCHES.search(line)
        if branches:
            called += [b.strip().lstrip("%") for b in branches.group(1).split(",") if b.strip()]
        for callee in called:
            _count_calls(bodies, callee, times, out)


def _trip_count(line: str, condition: list[str]) -> int:
    known = _TRIP.search(line)
    if known:
        return int(known.group(1))
    bounds = [int(c) for text in condition for c in _CONSTANT.findall(text)]
    return max(bounds) if bounds else 1


def ring_seconds(collective: Collective, bandwidth: float) -> float:
    """Time of one execution on a ring of `group` devices at `bandwidth` bytes/s each way: an
    all-gather or reduce-scatter moves (g-1)/g of the array through every device, an all-reduce
    twice that (a reduce-scatter then an all-gather)."""
    g = collective.group
    if g <= 1 or collective.bytes == 0:
        return 0.0
    share = (g - 1) / g * collective.bytes
    if collective.kind == "all-reduce":
        share *= 2
    elif collective.kind == "collective-permute":
        share = collective.bytes
    return share / bandwidth
