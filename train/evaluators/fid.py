"""FID and KID of the model's samples against a dataset split, with the FID Inception (its
weights loaded once, on first use). Each score is saved as `fid_step{S}_n{N}.json` in the workdir
with what it depends on (sample count, reference split, resize, weights, sampler)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

from train.capabilities import ImageSampler, ReferenceImages
from train.evaluators import base
from train.metrics import fid, generated
from train.metrics.generated import DEFAULT_WEIGHTS, generated_image_scores


class Evaluator(base.Evaluator):
    requires = (ImageSampler, ReferenceImages)
    defaults: ClassVar[dict[str, Any]] = {
        "num_samples": 10_000,  # samples and reference images (FID needs more than 2048)
        "split": "test",  # the reference split
        "weights": "",  # folder of the FID Inception weights; empty: ../shared/data's
        "cache": "",  # where reference statistics are cached; empty: ~/.cache/genlab/fid
        "seed": 0,
    }

    def __init__(self, name: str, settings: dict[str, Any]) -> None:
        super().__init__(name, settings)
        self._extractor: fid.FeatureExtractor | None = None

    def run(self, task: Any, state: Any, context: base.EvalContext) -> base.Evaluation:
        s = self.settings
        if self._extractor is None:
            self._extractor = fid.FeatureExtractor(Path(s["weights"] or DEFAULT_WEIGHTS))
        count = int(s["num_samples"])
        # The default is read at call time, so tests can redirect it.
        cache = Path(s["cache"]) if s["cache"] else generated.DEFAULT_CACHE
        scores = generated_image_scores(
            task, state, count, self._extractor, cache, s["split"], int(s["seed"])
        )
        record = {"step": context.step, **scores}
        if context.workdir is not None and context.is_lead:
            path = context.workdir / f"fid_step{context.step}_n{count}.json"
            path.write_text(json.dumps(record) + "\n")
        metrics = {k: float(v) for k, v in scores.items() if k.startswith("eval/")}
        return base.Evaluation(metrics, scores)
