"""How well an uncertainty score predicts that an answer is wrong: AUROC, the accuracy-rejection curve, AURAC, and
bootstrap intervals over problems.

Scores are uncertainties: higher means less sure. AUROC is the probability
that a wrong answer scores higher than a right one (ties count half): 0.5 is
chance, 1 a perfect predictor. The accuracy-rejection curve gives the accuracy
on the answers kept when the most uncertain ones are refused; AURAC (the area
under it, Farquhar et al. 2024) is its mean over every number of refusals.
Answers tied on the score are refused together in expectation (the accuracy
of the tied group stands in for any order within it), so neither a
constant score nor the order of problems in the file moves it.
"""

import random
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class Estimate:
    value: float | None  # None: undefined on these problems (AUROC with only right or only wrong answers)
    low: float | None = None  # bootstrap interval (2.5th and 97.5th percentiles over resampled problems)
    high: float | None = None

    def text(self, percent: bool = False) -> str:
        if self.value is None:
            return "-"
        scale, unit = (100, "%") if percent else (1, "")
        interval = "" if self.low is None else f" [{scale * self.low:.{1 if percent else 3}f}, " \
                                               f"{scale * self.high:.{1 if percent else 3}f}]"
        return f"{scale * self.value:.{1 if percent else 3}f}{unit}{interval}"


def auroc(scores: list[float], wrong: list[bool]) -> float | None:
    """P(score of a wrong answer > score of a right one), ties half (Mann-Whitney U / (n_wrong n_right))."""
    positives = [s for s, w in zip(scores, wrong) if w]
    negatives = [s for s, w in zip(scores, wrong) if not w]
    if not positives or not negatives:
        return None
    ranks = _ranks(scores)
    rank_sum = sum(r for r, w in zip(ranks, wrong) if w)
    u = rank_sum - len(positives) * (len(positives) + 1) / 2
    return u / (len(positives) * len(negatives))


def _ranks(values: list[float]) -> list[float]:
    """1-based ranks, ties given their mean rank."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        for k in range(start, end + 1):
            ranks[order[k]] = (start + end) / 2 + 1
        start = end + 1
    return ranks


def rejection_curve(scores: list[float], correct: list[bool]) -> list[float]:
    """Accuracy on the kept answers after refusing the r most uncertain, for r = 0 .. N-1 (expected over ties)."""
    groups: dict[float, list[int]] = {}
    for s, c in zip(scores, correct):
        group = groups.setdefault(s, [0, 0])
        group[0] += 1
        group[1] += bool(c)
    ordered = [groups[s] for s in sorted(groups)]  # most certain first: [size, right]
    accuracy, size, right, next_group = [], 0, 0, 0
    for keep in range(1, len(scores) + 1):
        while next_group < len(ordered) and size + ordered[next_group][0] <= keep:
            size, right = size + ordered[next_group][0], right + ordered[next_group][1]
            next_group += 1
        partial = keep - size  # a share of the next tied group
        accuracy.append((right + (partial * ordered[next_group][1] / ordered[next_group][0] if partial else 0)) / keep)
    return accuracy[::-1]


def aurac(scores: list[float], correct: list[bool]) -> float | None:
    """Area under the accuracy-rejection curve: the mean accuracy over every number of refusals."""
    curve = rejection_curve(scores, correct)
    return sum(curve) / len(curve) if curve else None


def bootstrap(statistic: Callable[[list[int]], float | None], problems: int, resamples: int,
              seed: int = 0) -> Estimate:
    """statistic(indices) on all problems, with the 95% interval of its value on problems drawn with replacement
    (resamples where it is undefined are left out)."""
    value = statistic(list(range(problems)))
    if value is None or resamples < 1:
        return Estimate(value)
    rng = random.Random(seed)
    values = sorted(v for v in (statistic([rng.randrange(problems) for _ in range(problems)])
                                for _ in range(resamples)) if v is not None)
    if not values:
        return Estimate(value)
    return Estimate(value, values[int(0.025 * (len(values) - 1))], values[int(0.975 * (len(values) - 1))])
