"""Transfer learning for any family: `init_from` starts a run from another run's parameters, and
`freeze` keeps the parameters a regex names fixed.

Both work on the state tree alone, so the trainer stays family-agnostic: parameters are the
leaves under a key named `params` (a TrainState's) or ending in `_params` (e.g. `ema_params`),
named by their '/'-joined path with the `params` level left out (`block_0/attn/qkv_kernel`;
`generator/...` for a GAN). Only the source checkpoint's parameter arrays are read (an Orbax
partial restore), straight onto this run's shardings; optimizer state and step start fresh.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp

from train.checkpoint import CHECKPOINT_DIR
from train.errors import UserError

KeyPath = tuple[str, ...]


def _key(entry: Any) -> str:
    for attribute in ("key", "name", "idx"):
        if hasattr(entry, attribute):
            return str(getattr(entry, attribute))
    return str(entry)


def path_of(key_path: Any) -> KeyPath:
    """A JAX key path as a tuple of strings (dict keys, attribute names, indices)."""
    return tuple(_key(k) for k in key_path)


def parameter_name(path: KeyPath) -> str | None:
    """The name of the leaf at `path` if it is a parameter, else None (optimizer state, step)."""
    for index, part in enumerate(path):
        if part == "params":
            return "/".join(path[:index] + path[index + 1 :])
        if part.endswith("_params"):
            return "/".join(path)
    return None


def parameters(tree: Any) -> dict[str, tuple[KeyPath, Any]]:
    """name -> (path in the tree, leaf) for every parameter leaf of a state (or its metadata)."""
    found = {}
    for key_path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        path = path_of(key_path)
        name = parameter_name(path)
        if name is not None:
            found[name] = (path, leaf)
    return found


@dataclass
class LoadReport:
    """What `init_from` did, parameter by parameter."""

    source: str
    step: int
    loaded: list[tuple[str, tuple[int, ...]]] = field(default_factory=list)
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    new: list[tuple[str, tuple[int, ...]]] = field(default_factory=list)
    unused: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        size = sum(math.prod(s) for _, s in self.loaded)
        out = [
            f"init_from {self.source} (step {self.step}): loaded {len(self.loaded)} parameters "
            f"({size:,} values), skipped {len(self.mismatched)} of another shape and "
            f"{len(self.unused)} this model lacks, newly initialised {len(self.new)}"
        ]
        out += [f"  loaded       {n} {list(s)}" for n, s in self.loaded]
        out += [
            f"  skipped      {n}: shape {list(a)} there, {list(b)} here"
            for n, a, b in self.mismatched
        ]
        out += [f"  skipped      {n}: not in this model" for n in self.unused]
        out += [f"  initialised  {n} {list(s)}: not in the source" for n, s in self.new]
        return out


def parse_source(spec: str) -> tuple[Path, int | None]:
    """`WORKDIR` or `WORKDIR:STEP` -> (folder, step or None for the newest)."""
    folder, step = Path(spec), None
    head, sep, tail = spec.rpartition(":")
    if not folder.is_dir() and sep and tail.isdigit():
        folder, step = Path(head), int(tail)
    if not folder.is_dir():
        raise UserError(f"init_from={spec!r}: no such folder (expected WORKDIR or WORKDIR:STEP)")
    return folder, step


def _source_manager(folder: Path, spec: str) -> ocp.CheckpointManager:
    """A read-only manager of the source run's checkpoints (`spec` names it in errors)."""
    directory = folder.absolute() / CHECKPOINT_DIR
    if not directory.is_dir():
        raise UserError(f"init_from={spec!r}: {folder} holds no {CHECKPOINT_DIR}/ (no genlab run?)")
    options = ocp.CheckpointManagerOptions(read_only=True, create=False)
    # A PyTree handler reads the StandardSave'd state's metadata and restores part of it.
    return ocp.CheckpointManager(
        directory,
        options=options,
        item_names=("state",),
        item_handlers={"state": ocp.PyTreeCheckpointHandler()},
    )


def load_parameters(state: Any, shardings: Any, spec: str) -> tuple[Any, LoadReport]:
    """`state` with every parameter that the source checkpoint has by the same name and shape
    replaced by the source's value, laid out as `shardings`; the rest keep their init."""
    folder, step = parse_source(spec)
    manager = _source_manager(folder, spec)
    steps = sorted(manager.all_steps())
    if not steps:
        raise UserError(f"init_from={spec!r}: {folder} has no checkpoints to load")
    if step is None:
        step = steps[-1]
    elif step not in steps:
        raise UserError(f"init_from={spec!r}: no checkpoint at step {step}; available: {steps}")
    saved = parameters(manager.item_metadata(step)["state"].tree)
    ours = parameters(state)
    placed = {name: leaf for name, (_, leaf) in parameters(shardings).items()}
    report = LoadReport(str(folder), step)
    target: dict[str, Any] = {}
    for name, (_, value) in ours.items():
        if name not in saved:
            report.new.append((name, tuple(value.shape)))
            continue
        saved_path, meta = saved[name]
        if tuple(meta.shape) != tuple(value.shape):
            report.mismatched.append((name, tuple(meta.shape), tuple(value.shape)))
            continue
        report.loaded.append((name, tuple(value.shape)))
        leaf = jax.ShapeDtypeStruct(value.shape, value.dtype, sharding=placed[name])
        _nest(target, saved_path, leaf)
    report.unused = sorted(set(saved) - set(ours))
    if not report.loaded:
        raise UserError(
            f"init_from={spec!r}: no parameter of that run matches this model by name and shape"
        )
    restore = ocp.args.PyTreeRestore(
        item=target,
        restore_args=ocp.checkpoint_utils.construct_restore_args(target),
        partial_restore=True,
    )
    restored = manager.restore(step, args=ocp.args.Composite(state=restore))["state"]
    manager.close()
    values = {name: leaf for name, (_, leaf) in parameters(restored).items()}

    def pick(key_path: Any, leaf: Any) -> Any:
        name = parameter_name(path_of(key_path))
        return values.get(name, leaf) if name is not None else leaf

    return jax.tree_util.tree_map_with_path(pick, state), report


def _nest(tree: dict[str, Any], path: KeyPath, leaf: Any) -> None:
    for part in path[:-1]:
        tree = tree.setdefault(part, {})
    tree[path[-1]] = leaf


def compile_pattern(pattern: str, key: str = "freeze") -> re.Pattern:
    """`pattern` compiled, or a one-line error naming the config `key` it came from."""
    try:
        return re.compile(pattern)
    except re.error as error:
        raise UserError(f"{key}={pattern!r} is not a valid regular expression: {error}") from None


def frozen_names(state: Any, pattern: str) -> list[str]:
    """The parameters whose name `pattern` matches (re.search); a pattern that is not a regex, or
    matches nothing, is a mistake."""
    regex = compile_pattern(pattern)
    names = list(parameters(state))
    matched = [n for n in names if regex.search(n)]
    if not matched:
        raise UserError(
            f"freeze={pattern!r} matches no parameter; names look like {', '.join(names[:4])}"
        )
    return matched


def keep_frozen(train_step: Callable, frozen: list[str]) -> Callable:
    """A train step after which the frozen parameters are the ones it was given.

    A select, not `p + 0`, so they stay bit-identical, whatever optimizer (or two) a family
    uses, weight decay included. Their gradients and moments are still computed, and count
    towards a global-norm clip.
    """
    frozen_set = frozenset(frozen)

    def step(state: Any, batch: Any) -> tuple[Any, Any]:
        new_state, metrics = train_step(state, batch)

        def keep(key_path: Any, old: Any, new: Any) -> Any:
            name = parameter_name(path_of(key_path))
            return old if name in frozen_set else new

        return jax.tree_util.tree_map_with_path(keep, state, new_state), metrics

    return step


class Transfer:
    """The `init_from` and `freeze` settings of one run, as the trainer applies them."""

    def __init__(self, config: ml_collections.ConfigDict):
        self.init_from: str = config.get("init_from", "")
        self.freeze: str = config.get("freeze", "")
        self.frozen: list[str] = []
        if self.freeze:
            compile_pattern(self.freeze)  # a bad pattern fails before any work

    def prepare(self, state: Any, shardings: Any, fresh: bool) -> tuple[Any, list[str]]:
        """Load `init_from` into a fresh state (a resumed run keeps its own checkpoint) and
        resolve `freeze`; returns the state and lines to print."""
        lines: list[str] = []
        if fresh and self.init_from:
            state, report = load_parameters(state, shardings, self.init_from)
            lines += report.lines()
        if self.freeze:
            self.frozen = frozen_names(state, self.freeze)
            lines.append(f"freeze {self.freeze!r}: {len(self.frozen)} parameters fixed")
            lines += [f"  frozen       {name}" for name in self.frozen]
        return state, lines

    def wrap(self, train_step: Callable) -> Callable:
        """`train_step`, made to keep the frozen parameters fixed when `freeze` is set."""
        return keep_frozen(train_step, self.frozen) if self.frozen else train_step
