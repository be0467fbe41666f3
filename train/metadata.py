"""What a workdir records about its run: `config.json` (the resolved config) and `metadata.json`
(command, git commit, package versions, devices), so any result can be traced back."""

from __future__ import annotations

import json
import platform
import subprocess
import time
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import ml_collections

PACKAGES = (
    "jax",
    "jaxlib",
    "flax",
    "optax",
    "orbax-checkpoint",
    "ml_collections",
    "datasets",
    "numpy",
)


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def cpu_name() -> str:
    """The CPU's model name (Linux), for benchmark records."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def collect(argv: list[str]) -> dict:
    import jax

    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "command": argv,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "git_commit": git_commit(),
        "python": platform.python_version(),
        "host": platform.node(),
        "cpu": cpu_name(),
        "versions": versions,
        "platform": jax.default_backend(),
        "device_kind": jax.devices()[0].device_kind,
        "device_count": jax.device_count(),
        "process_count": jax.process_count(),
    }


CONFIG_FILE = "config.json"


def flat_settings(tree: Any, prefix: str = "") -> dict[str, Any]:
    """A nested config (as a dict, e.g. read from config.json) as {"a.b.c": value}; a leaf
    given with a `prefix` comes back as {prefix: leaf}."""
    if not isinstance(tree, dict):
        return {prefix: tree}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        out.update(flat_settings(value, f"{prefix}.{key}" if prefix else key))
    return out


def save_config(config: ml_collections.ConfigDict, path: Path) -> None:
    path.write_text(json.dumps(config.to_dict(), indent=2, sort_keys=True, default=str) + "\n")


def write_metadata(workdir: Path, argv: list[str], derived: dict[str, Any] | None = None) -> None:
    """The run's provenance, and the settings it derived from its data (e.g. the vocabulary
    size), which the config keeps as configured."""
    record = {**collect(argv), "derived": derived or {}}
    (workdir / "metadata.json").write_text(json.dumps(record, indent=2) + "\n")
