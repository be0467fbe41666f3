"""Corpus BLEU with sacreBLEU on detokenized output against raw (untokenized) references.

sacreBLEU tokenizes both sides itself (13a by default, as WMT reports), so the score does not
depend on our subword tokenizer; its signature (tokenizer, case, smoothing, version) is kept with
every score, since BLEU values are only comparable under the same signature (Post 2018).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

from sacrebleu.metrics import BLEU

from train.errors import UserError


@dataclass(frozen=True)
class BleuScore:
    bleu: float
    signature: str
    precisions: tuple[float, ...]  # 1- to 4-gram precisions, percent
    brevity_penalty: float
    hypothesis_length: int
    reference_length: int
    sentences: int

    def to_json(self) -> dict:
        return asdict(self)


def corpus_bleu(
    hypotheses: Sequence[str], references: Sequence[str], tokenize: str = "13a"
) -> BleuScore:
    """BLEU of one hypothesis per reference (a single reference each)."""
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses for {len(references)} references")
    if tokenize not in BLEU.TOKENIZERS:
        raise UserError(
            f"eval.bleu_tokenize={tokenize!r} is unknown; allowed: {', '.join(BLEU.TOKENIZERS)}"
        )
    metric = BLEU(tokenize=tokenize)
    score = metric.corpus_score(list(hypotheses), [list(references)])
    return BleuScore(
        bleu=float(score.score),
        signature=str(metric.get_signature()),
        precisions=tuple(float(p) for p in score.precisions),
        brevity_penalty=float(score.bp),
        hypothesis_length=int(score.sys_len),
        reference_length=int(score.ref_len),
        sentences=len(hypotheses),
    )
