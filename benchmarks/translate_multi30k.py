"""The Multi30k `cpu` result: `python benchmarks/translate_multi30k.py`.

Runs the documented commands: `genlab train` on `experiments/translate_multi30k.py:cpu`
(English -> German), then `genlab eval` on test_2016_flickr with every sentence translated
(the variant's beam search), and records sacreBLEU with its signature and the decode settings,
wall times and steps/s in `benchmarks/results/translate_multi30k.json`. A workdir that already
has the final checkpoint is only evaluated again.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.common import genlab, last_json  # noqa: E402
from train.logging import read_metrics  # noqa: E402
from train.metadata import collect  # noqa: E402

CONFIG = "experiments/translate_multi30k.py:cpu"
TEST_SPLIT = "test_2016_flickr"
CONTEXT = {
    "note": "cased, detokenized sacreBLEU (13a) on the raw references; many papers report "
    "BLEU on the lowercased, tokenized copy of Multi30k, which scores several points higher",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(REPO.parent / "shared/data/multi30k"))
    parser.add_argument("--workdir", default=str(REPO / "runs/translate_multi30k_cpu"))
    parser.add_argument(
        "--override",
        action="append",
        default=[],
        help="extra --config.KEY=VALUE for training (quick checks only; the result is the "
        "variant as it is)",
    )
    parser.add_argument("--test_examples", type=int, default=-1, help="-1: all 1,000")
    parser.add_argument("--out", default=str(REPO / "benchmarks/results/translate_multi30k.json"))
    args = parser.parse_args()
    workdir = Path(args.workdir)

    train_command = [
        "train",
        "--config",
        CONFIG,
        "--workdir",
        str(workdir),
        f"--config.data.path={args.data}",
        "--config.train.progress_bar=false",
        *args.override,
    ]
    load_before = os.getloadavg()
    started = time.perf_counter()
    genlab(*train_command)
    train_wall = time.perf_counter() - started
    load_after = os.getloadavg()

    eval_command = [
        "eval",
        "--workdir",
        str(workdir),
        f"--config.data.path={args.data}",
        f"--config.data.eval_split={TEST_SPLIT}",
        "--config.data.eval_examples=0",
        f"--config.evals.bleu.examples={args.test_examples}",
    ]
    started = time.perf_counter()
    scores = last_json(genlab(*eval_command))
    eval_wall = time.perf_counter() - started
    step = scores["step"]
    bleu = json.loads((workdir / "bleu" / f"step_{step:07d}_{TEST_SPLIT}.json").read_text())

    records = read_metrics(workdir)
    step_times = [r["perf/step_time_s"] for r in records if "perf/step_time_s" in r][1:]
    pairs = [r["train/pairs"] for r in records if "train/pairs" in r]
    hypotheses = Path(bleu["hypotheses"]).read_text().splitlines()
    config = json.loads((workdir / "config.json").read_text())
    result = {
        "benchmark": "Transformer encoder-decoder, Multi30k English -> German",
        "config": CONFIG,
        "commands": [shlex.join(["genlab", *c]) for c in (train_command, eval_command)],
        "steps": step,
        "batch_rows": config["train"]["batch_size"],
        "pairs_per_step": round(sum(pairs) / len(pairs), 1) if pairs else None,
        "test_split": TEST_SPLIT,
        "test_bleu": round(bleu["bleu"], 2),
        "sacrebleu_signature": bleu["signature"],
        "bleu_details": {
            k: bleu[k]
            for k in ("precisions", "brevity_penalty", "hypothesis_length", "reference_length")
        },
        "test_sentences": bleu["sentences"],
        "decode": bleu["decode"],
        "test_loss": round(scores["eval/loss"], 4),
        "test_ppl": round(scores["eval/ppl"], 2),
        "train_wall_s": round(train_wall, 1),
        "steps_per_s": round(1.0 / (sum(step_times) / len(step_times)), 3) if step_times else None,
        "test_eval_wall_s": round(eval_wall, 1),
        "load_average_before_and_after_training": [
            round(load_before[0], 2),
            round(load_after[0], 2),
        ],
        "examples": hypotheses[:5],
        "context": CONTEXT,
        "environment": collect(sys.argv),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "environment"}, indent=2))


if __name__ == "__main__":
    main()
