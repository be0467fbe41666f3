"""Run folders for the `genlab rate` tests, laid out as training leaves them: `config.json` (the
keys rate reads: `task`, `sample.prompt`), `metrics.jsonl` and `samples/` with the files each
family's `write_samples` writes (text as `step_<S>.txt`, grids through `train.pictures`)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from train.pictures import save_grid

PROMPT = "\n"


def make_run(
    root: Path, name: str, task: str, samples: dict[str, str | np.ndarray], loss: float = 1.0
) -> Path:
    """A workdir under `root`; `samples` maps file names to text or images [N, H, W, C] in
    [0, 1] (saved as an 8-column grid)."""
    workdir = root / name
    (workdir / "samples").mkdir(parents=True)
    config = {"task": task, "seed": 0, "sample": {"prompt": PROMPT, "num_examples": 2}}
    (workdir / "config.json").write_text(json.dumps(config))
    record = {"step": 20, "time": 1.0, "eval/loss": loss}
    (workdir / "metrics.jsonl").write_text(json.dumps(record) + "\n")
    for file, content in samples.items():
        if isinstance(content, str):
            (workdir / "samples" / file).write_text(content)
        else:
            save_grid(content, workdir / "samples" / file, 8)
    return workdir


def translations(outputs: list[str]) -> str:
    """A seq2seq sample file: source, `=> ` output, reference, blocks apart by a blank line."""
    sources = ["A dog runs across the grass.", "Two men are playing chess."]
    references = ["Ein Hund rennt über das Gras.", "Zwei Männer spielen Schach."]
    blocks = [
        f"{s}\n=> {o}\n(reference: {r})"
        for s, o, r in zip(sources, outputs, references, strict=True)
    ]
    return "\n\n".join(blocks) + "\n"


def grid(seed: int, count: int = 16) -> np.ndarray:
    return np.random.default_rng(seed).random((count, 8, 8, 1))


def family_runs(root: Path) -> dict[str, Path]:
    """Two runs of each kind of sample: LM text, translation, image grids."""
    return {
        "lm_a": make_run(
            root, "lm_a", "lm", {"step_0000010.txt": "old text", "step_0000020.txt": "ROMEO: hi"}
        ),
        "lm_b": make_run(root, "lm_b", "lm", {"step_0000020.txt": "JULIET: ho"}),
        "mt_a": make_run(
            root, "mt_a", "seq2seq", {"step_0000020.txt": translations(["Ein Hund.", "Schach."])}
        ),
        "mt_b": make_run(
            root, "mt_b", "seq2seq", {"step_0000020.txt": translations(["Hund rennt.", "Zwei."])}
        ),
        "gan_a": make_run(
            root,
            "gan_a",
            "gan",
            {"samples_0000010.png": grid(0), "samples_0000020.png": grid(1)},
        ),
        "gan_b": make_run(
            root,
            "gan_b",
            "gan",
            # `genlab sample`'s own grids are not training samples: never offered
            {"samples_0000020.png": grid(2), "sample_step20_seed0_n64.png": grid(3)},
        ),
    }
