"""BLEU (sacreBLEU) of the eval split's translations with the task's configured search. The
score, its signature, the decode settings and the translations go to `workdir/bleu/`."""

from __future__ import annotations

import json
from typing import Any, ClassVar

from train.capabilities import Translator
from train.evaluators import base
from train.metrics.bleu import BleuScore, corpus_bleu

BLEU_DIR = "bleu"


class Evaluator(base.Evaluator):
    requires = (Translator,)
    defaults: ClassVar[dict[str, Any]] = {
        "examples": -1,  # eval-split sentences translated (-1: all)
        "tokenize": "13a",  # sacreBLEU's tokenizer (13a: WMT's default)
    }

    def run(self, task: Translator, state: Any, context: base.EvalContext) -> base.Evaluation:
        sources, references = task.eval_pairs_text()
        count = len(sources) if self.settings["examples"] < 0 else self.settings["examples"]
        if count == 0:
            return base.Evaluation({})
        hypotheses = task.translate(state, sources[:count])
        score = corpus_bleu(hypotheses, references[:count], self.settings["tokenize"])
        record = {"eval/bleu": score.bleu, **score.to_json(), "decode": task.decode_settings()}
        if context.workdir is not None and context.is_lead:
            _save(task, score, hypotheses, context)
        return base.Evaluation({"eval/bleu": score.bleu}, record)


def _save(
    task: Translator, score: BleuScore, hypotheses: list[str], context: base.EvalContext
) -> None:
    """WORKDIR/bleu/step_N_SPLIT.{json,txt}: the score with its signature, the settings, and the
    translations themselves."""
    described = task.eval_split_description()
    folder = context.workdir / BLEU_DIR
    folder.mkdir(exist_ok=True)
    stem = f"step_{context.step:07d}_{described['split']}"
    (folder / f"{stem}.txt").write_text("".join(h + "\n" for h in hypotheses))
    record = {
        "step": context.step,
        **described,
        **score.to_json(),
        "decode": task.decode_settings(),
        "hypotheses": str(folder / f"{stem}.txt"),
    }
    (folder / f"{stem}.json").write_text(json.dumps(record, indent=2) + "\n")
