"""`codelm scaling fit`: Chinchilla's three approaches on a sweep's table, with bootstrap intervals.

1. Envelope: the lowest-loss run of each budget; its N and D, fitted as power laws in C.
2. IsoFLOP parabolas: per budget, loss as a parabola in ln N; its minimum gives N* (and D* from the budget's
   runs, ln D being linear in ln N along one budget); N* and D* fitted as power laws in C.
3. Parametric: L(N, D) = E + A/N^alpha + B/D^beta fitted to every run, as Hoffmann et al. do and Besiroglu et al.
   (2024) insist: Huber loss (delta 1e-3) on log-loss residuals, summed over runs, not averaged (averaging shrinks
   the objective below the optimizer's tolerance and it stops early), L-BFGS from the best of a grid of starts.
Intervals: the runs are resampled with replacement within each budget and everything is refitted; the 2.5% and
97.5% percentiles of each number are its 95% interval.
"""

import math
from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize
from scipy.special import logsumexp, softmax

from codelm.errors import UserError
from codelm.scaling.laws import Law
from codelm.scaling.results import Run

HUBER_DELTA = 1e-3
# Hoffmann et al.'s grid of starting points: e = ln E, a = ln A, b = ln B
EXPONENTS = [0, 0.5, 1, 1.5, 2]
START_GRID = np.array(np.meshgrid([-1, -0.5, 0, 0.5, 1], np.arange(0, 30, 5), np.arange(0, 30, 5), EXPONENTS,
                                  EXPONENTS, indexing="ij"), dtype=float).reshape(5, -1).T
BOUNDS = [(-10, 10), (-20, 60), (-20, 60), (0, 5), (0, 5)]  # wide; they only stop a degenerate fit running off
REFINED_STARTS = 4  # L-BFGS runs from this many of the grid's best points
MIN_SIZES = 3  # a parabola needs three sizes


@dataclass
class Parabola:
    """Approach 2 on one budget: loss = c2 (ln N)^2 + c1 ln N + c0 over its runs."""

    budget: float
    c2: float
    c1: float
    c0: float
    n_opt: float
    d_opt: float
    loss_opt: float
    bracketed: bool  # convex, with its minimum inside the budget's sizes: only these enter the power law

    @classmethod
    def of(cls, budget: float, runs: list[Run], params: str) -> "Parabola":
        ln_n = np.log([r.params(params) for r in runs])
        c2, c1, c0 = np.polyfit(ln_n, [r.val_loss for r in runs], 2)
        slope, intercept = np.polyfit(ln_n, np.log([r.tokens for r in runs]), 1)
        x = -c1 / (2 * c2) if c2 > 0 else math.nan
        with np.errstate(over="ignore"):  # a nearly flat curve puts its minimum far away: inf, not an error
            n_opt, d_opt = np.exp(x), np.exp(intercept + slope * x)
        return cls(budget, float(c2), float(c1), float(c0), float(n_opt), float(d_opt), float(c0 - c1 * c1 / (4 * c2)),
                   bool(c2 > 0 and ln_n.min() <= x <= ln_n.max()))


def power_law(flops, values) -> tuple[float, float]:
    """(exponent, coefficient) of values = coefficient * flops^exponent, least squares in logs."""
    if len(flops) < 2:
        return math.nan, math.nan
    exponent, log_coefficient = np.polyfit(np.log(flops), np.log(values), 1)
    return float(exponent), float(math.exp(log_coefficient))


def huber_objective(theta, ln_n, ln_d, ln_loss):
    """Summed Huber loss of ln(predicted loss) - ln(loss), and its gradient in (e, a, b, alpha, beta)."""
    e, a, b, alpha, beta = theta
    terms = np.stack([np.full_like(ln_n, e), a - alpha * ln_n, b - beta * ln_d])
    r = logsumexp(terms, axis=0) - ln_loss
    small = np.abs(r) <= HUBER_DELTA
    value = np.where(small, 0.5 * r**2, HUBER_DELTA * (np.abs(r) - 0.5 * HUBER_DELTA)).sum()
    w = softmax(terms, axis=0) * np.where(small, r, HUBER_DELTA * np.sign(r))
    return value, np.array([w[0].sum(), w[1].sum(), w[2].sum(), -(w[1] * ln_n).sum(), -(w[2] * ln_d).sum()])


def grid_objective(ln_n, ln_d, ln_loss) -> np.ndarray:
    """The summed Huber loss at every start of START_GRID at once."""
    e, a, b, alpha, beta = (START_GRID[:, i, None] for i in range(5))
    r = np.logaddexp(np.logaddexp(e, a - alpha * ln_n), b - beta * ln_d) - ln_loss
    return np.where(np.abs(r) <= HUBER_DELTA, 0.5 * r**2, HUBER_DELTA * (np.abs(r) - 0.5 * HUBER_DELTA)).sum(axis=1)


def fit_law(n, d, loss, params: str = "total", start: Law | None = None) -> Law:
    """Approach 3: E, A, B, alpha, beta by L-BFGS from the best starts of Hoffmann et al.'s grid, or from `start`
    and the grid's best (a bootstrap resample starts from the whole data's fit: the same optimum, found faster)."""
    ln_n, ln_d, ln_loss = np.log(n), np.log(d), np.log(loss)
    starts = START_GRID[np.argsort(grid_objective(ln_n, ln_d, ln_loss))[:1 if start else REFINED_STARTS]]
    if start:
        starts = np.vstack([starts, [math.log(start.E), math.log(start.A), math.log(start.B), start.alpha, start.beta]])
    best = min((minimize(huber_objective, start, args=(ln_n, ln_d, ln_loss), jac=True, method="L-BFGS-B",
                         bounds=BOUNDS, options={"maxiter": 5000, "ftol": 1e-15, "gtol": 1e-12}) for start in starts),
               key=lambda result: result.fun)
    e, a, b, alpha, beta = best.x
    return Law(math.exp(e), math.exp(a), math.exp(b), alpha, beta, "approach 3 fit", params)


def by_budget(runs: list[Run]) -> dict[float, list[Run]]:
    groups: dict[float, list[Run]] = {}
    for run in runs:
        groups.setdefault(run.budget, []).append(run)
    return dict(sorted(groups.items()))


@dataclass
class Estimates:
    """The three approaches on one set of runs."""

    envelope: list[Run]  # approach 1: each budget's lowest-loss run
    parabolas: list[Parabola]  # approach 2
    law: Law  # approach 3
    params: str

    @classmethod
    def of(cls, runs: list[Run], params: str, start: Law | None = None) -> "Estimates":
        groups = by_budget(runs)
        parabolas = [Parabola.of(budget, group, params) for budget, group in groups.items()
                     if len({r.params(params) for r in group}) >= MIN_SIZES]
        law = fit_law([r.params(params) for r in runs], [r.tokens for r in runs], [r.val_loss for r in runs], params,
                      start)
        return cls([min(group, key=lambda r: r.val_loss) for group in groups.values()], parabolas, law, params)

    def numbers(self) -> dict[str, float]:
        """The headline numbers; NaN where an approach cannot say (too few U-shaped budgets)."""
        best = self.envelope
        good = [p for p in self.parabolas if p.bracketed]
        largest = max(r.budget for r in best)
        n3, d3 = self.law.optimal(largest)
        last = self.parabolas[-1] if self.parabolas and self.parabolas[-1].budget == largest else None
        return {
            "approach 1: a (N* ~ C^a)": power_law([r.flops for r in best], [r.params(self.params) for r in best])[0],
            "approach 1: b (D* ~ C^b)": power_law([r.flops for r in best], [r.tokens for r in best])[0],
            "approach 2: a (N* ~ C^a)": power_law([p.budget for p in good], [p.n_opt for p in good])[0],
            "approach 2: b (D* ~ C^b)": power_law([p.budget for p in good], [p.d_opt for p in good])[0],
            "approach 3: a = beta/(alpha+beta)": self.law.beta / (self.law.alpha + self.law.beta),
            "approach 3: b = alpha/(alpha+beta)": self.law.alpha / (self.law.alpha + self.law.beta),
            "approach 3: alpha": self.law.alpha,
            "approach 3: beta": self.law.beta,
            "approach 3: E": self.law.E,
            "approach 3: A": self.law.A,
            "approach 3: B": self.law.B,
            "approach 1: D/N at the largest budget": best[-1].tokens / best[-1].params(self.params),
            "approach 2: D*/N* at the largest budget": last.d_opt / last.n_opt if last and last.bracketed else math.nan,
            "approach 3: D*/N* at the largest budget (C = 6ND)": d3 / n3,
        }


def check_runs(runs: list[Run], params: str):
    """Enough finished runs for every approach: 3 sizes in each budget, 2 budgets."""
    groups = by_budget([r for r in runs if r.status == "done"])
    thin = [f"{budget:.3g} has {len({r.params(params) for r in group})} ({', '.join(r.name for r in group)})"
            for budget, group in groups.items() if len({r.params(params) for r in group}) < MIN_SIZES]
    if thin:
        raise UserError(f"too few finished runs per budget: a parabola in ln N needs {MIN_SIZES} sizes, and budget "
                        f"{'; '.join(thin)}: finish the sweep (`codelm scaling sweep` resumes it) or drop the budget")
    if len(groups) < 2:
        raise UserError(f"{len(groups)} budget(s) with finished runs: a power law in C needs at least 2")


def bootstrap(runs: list[Run], fitted: Estimates, samples: int, seed: int) -> dict[str, tuple[float, float, int]]:
    """95% percentile interval of each headline number over `samples` resamples of the runs (within each budget),
    and how many resamples could give that number."""
    rng = np.random.default_rng(seed)
    groups = list(by_budget(runs).values())
    values = [Estimates.of([group[i] for group in groups for i in rng.integers(0, len(group), len(group))],
                           fitted.params, fitted.law).numbers() for _ in range(samples)]
    intervals = {}
    for name in values[0] if values else []:
        column = np.array([v[name] for v in values])
        finite = column[np.isfinite(column)]
        lo, hi = np.percentile(finite, [2.5, 97.5]) if finite.size else (math.nan, math.nan)
        intervals[name] = (float(lo), float(hi), int(finite.size))
    return intervals
