"""`genlab compare`: one table (Markdown + CSV) and one plot per metric across runs and sweeps.

Rows hold each run's config differences, the final and best value of each metric, the last step,
wall time and throughput; published numbers from `experiments/references.py` are added as extra
rows where dataset and metric match (and the evaluated split, for split-specific ones). With
`--ratings STORE` (judgements from `genlab rate`), each run also gets its win rate with a 95%
interval and its Bradley–Terry score among the compared runs.
"""

from __future__ import annotations

import csv
import json
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from experiments.references import matching
from launch.sweep import MANIFEST, read_manifest
from train.errors import UserError
from train.logging import METRICS_FILE, read_metrics
from train.metadata import flat_settings

HIGHER_IS_BETTER = ("bleu", "elbo", "accuracy", "auroc", "inception_score")
DEFAULT_METRICS = ("eval/loss",)


@dataclass
class RunRecord:
    name: str
    workdir: Path
    config: dict[str, Any]
    records: list[dict[str, Any]]


def find_runs(paths: list[str]) -> list[RunRecord]:
    """Runs named directly, or every run of a sweep folder (in its manifest order)."""
    runs: list[RunRecord] = []
    for text in paths:
        path = Path(text)
        if (path / MANIFEST).is_file():
            for entry in read_manifest(path)["runs"]:
                workdir = Path(entry["workdir"])
                if (workdir / METRICS_FILE).is_file():
                    runs.append(_load(workdir, entry["name"]))
        elif (path / METRICS_FILE).is_file():
            runs.append(_load(path, path.name))
        else:
            raise UserError(
                f"compare: {path} is neither a run (no {METRICS_FILE}) nor a sweep "
                f"folder (no {MANIFEST})"
            )
    if not runs:
        raise UserError("compare: the given folders hold no runs with metrics yet")
    return runs


def _load(workdir: Path, name: str) -> RunRecord:
    config_file = workdir / "config.json"
    config = json.loads(config_file.read_text()) if config_file.is_file() else {}
    return RunRecord(name, workdir, config, read_metrics(workdir))


def config_differences(runs: list[RunRecord]) -> list[dict[str, Any]]:
    """For each run, the config keys whose values are not the same in every run."""
    flats = [flat_settings(r.config) for r in runs]
    keys = sorted({k for f in flats for k in f})
    varying = [k for k in keys if len({json.dumps(f.get(k), sort_keys=True) for f in flats}) > 1]
    ignored = ("data.path",)
    # A key one run lacks (another family's setting) is left out of that run's row, not `None`.
    return [{k: f[k] for k in varying if k not in ignored and k in f} for f in flats]


def _best(values: list[float], metric: str) -> float:
    return max(values) if metric.split("/")[-1] in HIGHER_IS_BETTER else min(values)


def summarize(run: RunRecord, metrics: list[str]) -> dict[str, Any]:
    row: dict[str, Any] = {}
    for metric in metrics:
        values = [r[metric] for r in run.records if isinstance(r.get(metric), int | float)]
        row[f"{metric} final"] = values[-1] if values else None
        row[f"{metric} best"] = _best(values, metric) if values else None
    row["step"] = max((r["step"] for r in run.records), default=None)
    times = [r["time"] for r in run.records if "time" in r]
    row["wall time (s)"] = round(times[-1] - times[0], 1) if len(times) > 1 else None
    speeds = [
        v
        for r in run.records
        for k, v in r.items()
        if k.startswith("perf/") and k.endswith("_per_s")
    ]
    row["throughput (/s)"] = round(statistics.median(speeds), 1) if speeds else None
    return row


def build_table(runs: list[RunRecord], metrics: list[str]) -> list[dict[str, Any]]:
    rows = []
    for run, diff in zip(runs, config_differences(runs), strict=True):
        changes = ", ".join(f"{k}={v}" for k, v in diff.items()) or "(base)"
        rows.append({"run": run.name, "config differences": changes, **summarize(run, metrics)})
    evaluated = {
        (flat.get("data.name"), flat.get("data.eval_split"))
        for flat in (flat_settings(r.config) for r in runs)
        if flat.get("data.name") is not None
    }
    shown: set = set()
    for dataset, split in sorted(evaluated, key=str):
        for metric in metrics:
            for ref in matching(dataset, metric, split):
                if ref in shown:
                    continue
                shown.add(ref)
                rows.append(
                    {
                        "run": f"reference: {ref.name}",
                        "config differences": f"{ref.source}"
                        + (f"; data.eval_split={ref.split}" if ref.split else "")
                        + (f"; {ref.note}" if ref.note else ""),
                        f"{metric} final": ref.value,
                        f"{metric} best": ref.value,
                    }
                )
    return rows


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 1e3 else f"{value:,.0f}"
    return str(value).replace("|", "\\|").replace("\n", "\\n")  # one Markdown row per run


def add_ratings(rows: list[dict[str, Any]], runs: list[RunRecord], store_path: Path) -> str:
    """Win rates and Bradley–Terry scores from a `genlab rate` store, added to the runs' rows
    (judgements between the compared runs only); returns a sentence saying how they were made."""
    from launch.rate.stats import Game, groups, summary
    from launch.rate.store import Store

    judgements = Store(store_path, create=False, flag="--ratings").judgements()
    if not judgements:
        raise UserError(f"--ratings {store_path}: holds no judgements yet (genlab rate fills it)")
    keys = [str(run.workdir.resolve()) for run in runs]
    share = {"left": 1.0, "right": 0.0, "tie": 0.5}
    games = [
        Game(j.left_run, j.right_run, share[j.choice])
        for j in judgements
        if j.left_run in keys and j.right_run in keys
    ]
    if not games:
        rated = sorted({Path(r).name for j in judgements for r in (j.left_run, j.right_run)})
        raise UserError(
            f"--ratings {store_path}: no judgement is between two of the compared runs; "
            f"rated runs: {', '.join(rated)}"
        )
    table = summary(keys, games)
    for row, key in zip(rows, keys, strict=False):  # the runs' rows come first, in order
        row.update(table[key])
    raters = len({j.rater for j in judgements})
    left_out = len(judgements) - len(games)
    linked = groups(keys, games)
    return (
        f"Ratings: {len(games)} blind pairwise judgements from {store_path} ({raters} "
        f"rater{'s' * (raters != 1)}"
        + (f"; {left_out} involving runs not compared here left out" if left_out else "")
        + "). Win rate counts a tie as half a win, with a 95% Wilson interval; the "
        "Bradley–Terry score is each run's fitted log-strength (ties as half wins, mean 0): "
        "run i beats run j with probability 1 / (1 + exp(s_j - s_i))."
        + (
            f" The judgements link the runs in {len(linked)} separate groups (runs never "
            "compared, directly or through others): compare scores only within a group."
            if len(linked) > 1
            else ""
        )
    )


def rated_workdirs(store_path: Path) -> list[str]:
    """The runs a ratings store has judgements of, for `compare --ratings` without folders."""
    from launch.rate.store import Store

    judgements = Store(store_path, create=False, flag="--ratings").judgements()
    if not judgements:
        raise UserError(f"--ratings {store_path}: holds no judgements yet (genlab rate fills it)")
    return sorted({r for j in judgements for r in (j.left_run, j.right_run)})


def write_reports(
    rows: list[dict[str, Any]],
    runs: list[RunRecord],
    metrics: list[str],
    out: Path,
    notes: list[str] | None = None,
) -> list[Path]:
    """compare.md (the table, then `notes`), compare.csv and one PNG per metric; returns the
    files written."""
    out.mkdir(parents=True, exist_ok=True)
    columns = list(dict.fromkeys(k for row in rows for k in row))
    with (out / "compare.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(row.get(c)) for c in columns) + " |" for row in rows]
    lines += [f"\n{note}" for note in notes or []]
    (out / "compare.md").write_text("\n".join(lines) + "\n")
    written = [out / "compare.md", out / "compare.csv"]
    written += [plot_metric(runs, metric, out) for metric in metrics]
    return written


def plot_metric(runs: list[RunRecord], metric: str, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4.5))
    for run in runs:
        points = [
            (r["step"], r[metric]) for r in run.records if isinstance(r.get(metric), int | float)
        ]
        if points:
            steps, values = zip(*points, strict=True)
            axis.plot(steps, values, marker="o" if len(points) < 20 else None, label=run.name)
    axis.set_xlabel("step")
    axis.set_ylabel(metric)
    axis.set_title(metric)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7)
    figure.tight_layout()
    path = out / (metric.replace("/", "_") + ".png")
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def compare(
    paths: list[str], metrics: list[str] | None, out: Path, ratings: Path | None = None
) -> list[Path]:
    if not paths and ratings is None:
        raise UserError("compare: name run workdirs or sweep folders (or --ratings STORE)")
    runs = find_runs(paths or rated_workdirs(ratings))
    known = {k for run in runs for r in run.records for k in r}
    if not metrics:  # with ratings, runs that never logged eval/loss (GANs) are fine
        metrics = [m for m in DEFAULT_METRICS if ratings is None or m in known]
    unknown = [m for m in metrics if m not in known]
    if unknown:
        allowed = sorted(k for k in known if "/" in k)
        raise UserError(f"--metric {unknown[0]}: no run logged it; logged: {', '.join(allowed)}")
    rows = build_table(runs, metrics)
    notes = [add_ratings(rows, runs, ratings)] if ratings is not None else []
    return write_reports(rows, runs, metrics, out, notes)
