"""Win rates with 95% Wilson intervals and Bradley–Terry scores from pairwise judgements.

A tie counts as half a win for each side, in both. The Bradley–Terry model says run i beats run j
with probability 1 / (1 + exp(s_j - s_i)); the scores s are fitted by maximum likelihood
(scipy's L-BFGS) with a weak Gaussian prior (standard deviation 10) that keeps a run that won or
lost every game finite; they average 0 within each group of runs linked by judgements (directly
or through other runs), and scores of different groups are not comparable.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

Z95 = 1.959963984540054  # the normal quantile of 0.975
PRIOR_PRECISION = 0.01  # 1 / 10^2


@dataclass(frozen=True)
class Game:
    """One judgement between runs `a` and `b`: `score` is a's share of the win (1, 0.5 or 0)."""

    a: str
    b: str
    score: float


def wilson(successes: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson's score interval for a proportion (successes may be a half-integer: ties)."""
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def bradley_terry(runs: list[str], games: list[Game]) -> dict[str, float]:
    """Each run's Bradley–Terry score (log-strength, mean 0 within each linked group)."""
    from scipy.optimize import minimize

    index = {run: i for i, run in enumerate(runs)}
    a = np.array([index[g.a] for g in games], dtype=int)
    b = np.array([index[g.b] for g in games], dtype=int)
    score = np.array([g.score for g in games], dtype=float)

    def loss(s: np.ndarray) -> tuple[float, np.ndarray]:
        d = s[a] - s[b]
        # -log-likelihood of shares: score * log sigma(d) + (1 - score) * log sigma(-d)
        value = np.sum(np.logaddexp(0.0, -d) * score + np.logaddexp(0.0, d) * (1 - score))
        residual = 1.0 / (1.0 + np.exp(-d)) - score  # d(-loglik)/dd
        grad = np.bincount(a, residual, len(runs)) - np.bincount(b, residual, len(runs))
        return value + PRIOR_PRECISION / 2 * s @ s, grad + PRIOR_PRECISION * s

    fit = minimize(loss, np.zeros(len(runs)), jac=True, method="L-BFGS-B")
    scores = {run: float(fit.x[index[run]]) for run in runs}
    for group in groups(runs, games):  # the likelihood ignores shifts: centre each group
        mean = sum(scores[run] for run in group) / len(group)
        scores.update({run: scores[run] - mean for run in group})
    return scores


def groups(runs: list[str], games: list[Game]) -> list[set[str]]:
    """The runs linked by judgements, directly or through other runs (judged runs only)."""
    linked: list[set[str]] = []
    for game in games:
        touching = [g for g in linked if game.a in g or game.b in g]
        merged = {game.a, game.b}.union(*touching)
        linked = [g for g in linked if g not in touching] + [merged]
    return sorted(linked, key=lambda g: runs.index(min(g, key=runs.index)))


def summary(runs: list[str], games: list[Game]) -> dict[str, dict[str, float | int | None]]:
    """Per run: judgements it took part in, win rate (ties half) with its 95% interval, and its
    Bradley–Terry score; runs never judged get empty cells."""
    scores = bradley_terry(runs, games) if games else {}
    table: dict[str, dict[str, float | int | None]] = {}
    for run in runs:
        mine = [g.score for g in games if g.a == run] + [1 - g.score for g in games if g.b == run]
        n, wins = len(mine), sum(mine)
        low, high = wilson(wins, n) if n else (None, None)
        table[run] = {
            "judgements": n,
            "win rate (ties ½)": wins / n if n else None,
            "win rate 95% low": low,
            "win rate 95% high": high,
            "Bradley–Terry score": scores.get(run) if n else None,
        }
    return table
