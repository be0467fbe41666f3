"""Metric writers: `metrics.jsonl` always, TensorBoard event files, and a progress bar.

Only process 0 writes; other processes get a writer that drops everything.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import tqdm
from tensorboardX import SummaryWriter

METRICS_FILE = "metrics.jsonl"


def _plain(value: Any) -> Any:
    value = float(value) if hasattr(value, "__float__") else value
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class MetricWriter:
    """Appends one JSON object per event to metrics.jsonl and mirrors scalars to TensorBoard."""

    def __init__(self, workdir: Path, enabled: bool = True, resumed_at: int = 0):
        self.enabled = enabled
        if not enabled:
            return
        path = workdir / METRICS_FILE
        if path.is_file():  # drop what a killed run logged after its last checkpoint
            kept = [r for r in _parsed_lines(path) if r[1]["step"] <= resumed_at]
            path.write_text("".join(line + "\n" for line, _ in kept))
        self.jsonl = path.open("a")
        self.tb = SummaryWriter(str(workdir / "tb"), flush_secs=30)

    def write(self, step: int, metrics: dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = {
            "step": int(step),
            "time": time.time(),
            **{k: _plain(v) for k, v in metrics.items()},
        }
        self.jsonl.write(json.dumps(record) + "\n")
        self.jsonl.flush()
        for key, value in metrics.items():
            value = _plain(value)
            if isinstance(value, float | int):
                self.tb.add_scalar(key, value, int(step))

    def write_text(self, step: int, tag: str, text: str) -> None:
        if self.enabled:
            self.tb.add_text(tag, text, int(step))

    def close(self) -> None:
        if self.enabled:
            self.jsonl.close()
            self.tb.close()


def _parsed_lines(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """Each complete JSON line with its record; a line cut short by a kill is skipped."""
    parsed = []
    for line in path.read_text().splitlines():
        try:
            parsed.append((line, json.loads(line)))
        except json.JSONDecodeError:
            continue
    return parsed


def read_metrics(workdir: Path) -> list[dict[str, Any]]:
    return [record for _, record in _parsed_lines(Path(workdir) / METRICS_FILE)]


class Progress:
    """A tqdm bar over training steps that shows the latest loss, step time, tokens/s and MFU."""

    def __init__(self, total: int, initial: int, enabled: bool, lead: bool = True):
        self.lead = lead  # only process 0 prints
        self.bar = tqdm.tqdm(
            total=total, initial=initial, disable=not enabled, dynamic_ncols=True, unit="step"
        )

    def update(self, steps: int, metrics: dict[str, Any]) -> None:
        shown = {
            "loss": metrics.get("train/loss"),
            "ms/step": 1000 * metrics["perf/step_time_s"]
            if "perf/step_time_s" in metrics
            else None,
            "tok/s": metrics.get("perf/tokens_per_s"),
            "mfu": metrics.get("perf/mfu"),
        }
        self.bar.set_postfix(
            {k: f"{v:.4g}" for k, v in shown.items() if v is not None}, refresh=False
        )
        self.bar.update(steps)

    def print(self, text: str) -> None:
        if self.lead:
            tqdm.tqdm.write(text)

    def close(self) -> None:
        self.bar.close()
