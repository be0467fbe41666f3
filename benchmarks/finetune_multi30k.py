"""Fine-tuning a Tiny Shakespeare char LM on Multi30k English vs training it from scratch:
`python benchmarks/finetune_multi30k.py`.

1. Source: `experiments/shakespeare_char.py:cpu` trained on Tiny Shakespeare (2000 steps), or an
   existing run given with `--source` (e.g. the transformer of benchmarks/lm_compare.py).
2. Fine-tuned: the same model and recipe on the English side of Multi30k (train.en, validated
   on val.en, cleaned as the translation pipeline cleans them: `&amp;` unescaped, whitespace
   runs made one space; written to WORKDIR_ROOT/data/) for `--steps` steps,
   `--config.init_from=SOURCE`: every parameter is loaded.
3. Scratch: the same for the same steps from a fresh init, with the source's tokenizer
   (`data.tokenizer_from`), so both see the same characters and their losses compare.
Multi30k holds characters Tiny Shakespeare lacks (digits, quotes, brackets: 734 of 1.8M in
the cleaned train.en); both runs drop them (`data.unknown_chars=drop`). Writes the val loss
curves and the final val loss over `--eval_batches` batches to
`benchmarks/results/finetune_multi30k.json`.
Workdirs (`--workdir_root`) resume when the script is run again.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.common import genlab, last_json  # noqa: E402
from train.data.translation import clean, read_lines  # noqa: E402
from train.logging import read_metrics  # noqa: E402
from train.metadata import collect, cpu_name  # noqa: E402

CONFIG = "experiments/shakespeare_char.py:cpu"


def cleaned_english(multi30k: Path, folder: Path) -> dict[str, Path]:
    """Multi30k's train.en and val.en, each line cleaned as for translation (empty ones left
    out), as plain text files in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for split in ("train", "val"):
        lines = [clean(line) for line in read_lines(multi30k / f"{split}.en.gz")]
        out[split] = folder / f"{split}.en.txt"
        out[split].write_text("".join(line + "\n" for line in lines if line))
    return out


def train(workdir: Path, *overrides: str) -> tuple[float, str]:
    """`genlab train` (resuming when the workdir has checkpoints); wall time and its stdout."""
    started = time.perf_counter()
    out = genlab(
        "train",
        "--config",
        CONFIG,
        "--workdir",
        str(workdir),
        "--config.train.progress_bar=false",
        *overrides,
    )
    return time.perf_counter() - started, out


def val_loss(workdir: Path, batches: int) -> float:
    out = genlab("eval", "--workdir", str(workdir), f"--config.train.eval_batches={batches}")
    return last_json(out)["eval/loss"]


def curve(workdir: Path) -> list[list[float]]:
    return [
        [r["step"], round(r["eval/loss"], 4)] for r in read_metrics(workdir) if "eval/loss" in r
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    data = REPO.parent / "shared/data"
    parser.add_argument("--shakespeare", default=str(data / "tinyshakespeare/input.txt"))
    parser.add_argument("--multi30k", default=str(data / "multi30k"))
    parser.add_argument("--source", default="", help="a trained Shakespeare run (default: train)")
    parser.add_argument("--source_steps", type=int, default=2000)
    parser.add_argument("--steps", type=int, default=500, help="fine-tuning / scratch steps")
    parser.add_argument("--eval_every", type=int, default=100)
    parser.add_argument("--eval_batches", type=int, default=200)
    parser.add_argument("--workdir_root", default=str(REPO / "runs/finetune_multi30k"))
    parser.add_argument("--out", default=str(REPO / "benchmarks/results/finetune_multi30k.json"))
    args = parser.parse_args()
    root = Path(args.workdir_root)

    source = Path(args.source) if args.source else root / "source"
    walls = {}
    if not args.source:
        walls["source"], _ = train(
            source,
            f"--config.data.path={args.shakespeare}",
            f"--config.train.steps={args.source_steps}",
        )
    english = cleaned_english(Path(args.multi30k), root / "data")
    common = (
        f"--config.data.path={english['train']}",
        f"--config.data.val_path={english['val']}",
        "--config.data.unknown_chars=drop",
        f"--config.train.steps={args.steps}",
        f"--config.optim.decay_steps={args.steps}",
        f"--config.optim.warmup_steps={min(100, args.steps // 10)}",
        f"--config.train.eval_every={args.eval_every}",
        f"--config.train.checkpoint_every={args.steps}",
    )
    walls["finetuned"], printed = train(root / "finetuned", *common, f"--config.init_from={source}")
    walls["scratch"], _ = train(root / "scratch", *common, f"--config.data.tokenizer_from={source}")

    runs = {name: root / name for name in ("finetuned", "scratch")}
    result = {
        "benchmark": "Tiny Shakespeare char LM fine-tuned on Multi30k English vs from scratch",
        "config": CONFIG,
        "source": str(source),
        "source_val_loss_shakespeare": round(val_loss(source, args.eval_batches), 4),
        "steps": args.steps,
        "val_loss": {name: round(val_loss(w, args.eval_batches), 4) for name, w in runs.items()},
        "val_loss_note": f"Multi30k val.en, {args.eval_batches} batches of 12 x 64 characters, "
        "characters outside Tiny Shakespeare's 65 dropped",
        "curves": {name: curve(w) for name, w in runs.items()},
        "init_from_report": [line for line in printed.splitlines() if "init_from" in line],
        "wall_s": {k: round(v, 1) for k, v in walls.items()},
        "machine": {"cpu": cpu_name(), "cores": os.cpu_count()},
        "environment": collect(sys.argv),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "environment"}, indent=2))


if __name__ == "__main__":
    main()
