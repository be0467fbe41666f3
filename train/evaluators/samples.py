"""Fixed-seed samples written into `workdir/samples` at each eval (text, or picture grids), so
progress can be read or flipped through step by step."""

from __future__ import annotations

from typing import Any

from train.capabilities import SampleWriter
from train.evaluators import base


class Evaluator(base.Evaluator):
    requires = (SampleWriter,)

    def run(self, task: SampleWriter, state: Any, context: base.EvalContext) -> base.Evaluation:
        if context.workdir is None:
            return base.Evaluation({})
        text = task.write_samples(state, context.step, context.workdir)  # every process
        return base.Evaluation({}, {}, text)
