"""What `genlab rate` puts side by side: the newest samples each run wrote during training.

A run's `samples/` folder holds, per eval step, `step_<S>.txt` for text families (an LM's
continuation of `sample.prompt`; for translation, blocks of `source / => hypothesis /
(reference: ...)`) or `<kind>_<S>.png` grids for image families (`samples`, `reconstructions`,
`denoising`, ...). Items are matched across runs by what makes them comparable: the same prompt,
the same source sentence or the same kind of grid, each run contributing its newest file, so a
rating judges the runs as they are now.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from train.errors import UserError

SAMPLES = "samples"
CONFIG = "config.json"
TEXT_FILE = re.compile(r"step_(\d+)\.txt")
IMAGE_FILE = re.compile(r"([a-z]+)_(\d+)\.png")  # `genlab sample`'s own PNGs do not match
TRANSLATION = re.compile(r"(?P<source>.*)\n=> (?P<output>.*)\n\(reference: (?P<reference>.*)\)")


@dataclass(frozen=True)
class Shown:
    """One run's side of an item: the sample file it comes from and, for text, what to show."""

    file: Path
    text: str | None = None  # None: the file is a picture


@dataclass(frozen=True)
class Context:
    """What the rater sees above both sides (the same for every run that has the item)."""

    title: str
    lines: tuple[tuple[str, str], ...] = ()  # (label, text), e.g. ("source", "A dog runs.")
    prefix: str = ""  # text shown before each side's own text (an LM's prompt)


@dataclass
class RunSamples:
    """A run's newest comparable samples, by item key."""

    workdir: Path  # resolved: a run's identity in the ratings store
    name: str
    items: dict[str, Shown] = field(default_factory=dict)
    contexts: dict[str, Context] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return str(self.workdir)


def load_run(path: str) -> RunSamples:
    """A workdir's newest samples; a missing folder, a folder that is not a genlab run or a run
    with no samples yet is a UserError naming it."""
    workdir = Path(path)
    if not workdir.is_dir():
        raise UserError(f"--runs {path}: no such run folder")
    if not (workdir / CONFIG).is_file():
        raise UserError(f"--runs {path}: not a genlab run (no {CONFIG})")
    try:
        config = json.loads((workdir / CONFIG).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UserError(f"--runs {path}: {CONFIG} is not readable JSON ({error})") from None
    if not isinstance(config, dict):
        raise UserError(f"--runs {path}: {CONFIG} holds no config (a JSON object)")
    run = RunSamples(workdir.resolve(), workdir.resolve().name)
    folder = run.workdir / SAMPLES  # absolute: the server may be asked from anywhere
    files = sorted(folder.iterdir()) if folder.is_dir() else []
    _add_text(run, config, _newest(files, TEXT_FILE, lambda m: "text"))
    for kind, file in _newest(files, IMAGE_FILE, lambda m: m.group(1)).items():
        run.items[f"image:{kind}"] = Shown(file)
        run.contexts[f"image:{kind}"] = Context(f"a grid of {kind} from each run")
    if not run.items:
        raise UserError(
            f"--runs {path}: no samples to rate in {workdir / SAMPLES} (step_<S>.txt or "
            "<kind>_<S>.png, written at each eval); train or evaluate it first"
        )
    return run


def _newest(files: list[Path], pattern: re.Pattern, kind_of) -> dict[str, Path]:
    """The file of the highest step for each kind the pattern names."""
    best: dict[str, tuple[int, Path]] = {}
    for file in files:
        match = pattern.fullmatch(file.name)
        if match:
            kind, step = kind_of(match), int(match.groups()[-1])
            if kind not in best or step > best[kind][0]:
                best[kind] = (step, file)
    return {kind: file for kind, (_, file) in best.items()}


def _add_text(run: RunSamples, config: dict, newest: dict[str, Path]) -> None:
    if "text" not in newest:
        return
    file = newest["text"]
    text = file.read_text(errors="replace")
    if config.get("task") == "seq2seq":
        for block in text.strip("\n").split("\n\n"):
            match = TRANSLATION.fullmatch(block)
            if match:
                key = f"source:{match['source']}"
                run.items[key] = Shown(file, match["output"])
                lines = (("source", match["source"]), ("reference", match["reference"]))
                run.contexts[key] = Context("translation of the source sentence", lines)
        return
    prompt = str(config.get("sample", {}).get("prompt", ""))
    quoted = json.dumps(prompt, ensure_ascii=False)  # a newline prompt stays visible
    key = f"prompt:{quoted}"
    run.items[key] = Shown(file, text)
    run.contexts[key] = Context("continuation of the prompt", (("prompt", quoted),), prefix=prompt)


@dataclass(frozen=True)
class Comparison:
    """One thing a rater can judge: an item both runs have (runs in a fixed, sorted order)."""

    first: str  # run keys (resolved workdirs), first < second
    second: str
    item: str


def comparisons(runs: list[RunSamples]) -> list[Comparison]:
    """Every (pair of runs, shared item); runs of different kinds share none."""
    found = []
    ordered = sorted(runs, key=lambda r: r.key)
    for i, a in enumerate(ordered):
        for b in ordered[i + 1 :]:
            found += [Comparison(a.key, b.key, item) for item in sorted(a.items.keys() & b.items)]
    if not found:
        kinds = "; ".join(f"{r.name}: {', '.join(sorted(r.items))[:80]}" for r in runs)
        raise UserError(f"--runs: no two runs share a sample to compare ({kinds})")
    return found


def load_runs(paths: list[str]) -> dict[str, RunSamples]:
    """The runs to rate by key; fewer than two distinct runs is a UserError."""
    runs: dict[str, RunSamples] = {}
    for path in paths:
        run = load_run(path)
        if run.key in runs:
            raise UserError(f"--runs {path}: named twice (as {runs[run.key].workdir})")
        runs[run.key] = run
    if len(runs) < 2:
        raise UserError(f"--runs: rating needs at least two runs; got {len(runs)}")
    return runs
