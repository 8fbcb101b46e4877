"""The fit's two figures: IsoFLOP curves with their minima, and loss and N* against compute with the fits."""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from codelm.scaling.fit import Estimates, by_budget, power_law  # noqa: E402
from codelm.scaling.results import Run  # noqa: E402


def isoflop_plot(runs: list[Run], fitted: Estimates, path: Path):
    """Loss against N per budget, its parabola, and the parabola's minimum (hollow when outside the budget's sizes
    or not U-shaped)."""
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    parabolas = {p.budget: p for p in fitted.parabolas}
    groups = by_budget(runs)
    for color, (budget, group) in zip(plt.cm.viridis(np.linspace(0, 0.9, len(groups))), groups.items()):
        n = np.array([r.params(fitted.params) for r in group])
        ax.scatter(n, [r.val_loss for r in group], color=color, label=f"C = {budget:.3g}")
        p = parabolas.get(budget)
        if p is None:
            continue
        x = np.linspace(np.log(n.min()) - 0.3, np.log(n.max()) + 0.3, 100)
        ax.plot(np.exp(x), p.c2 * x**2 + p.c1 * x + p.c0, color=color, lw=1)
        if p.c2 > 0:
            ax.scatter([p.n_opt], [p.loss_opt], marker="*", s=160, edgecolors=color,
                       facecolors=color if p.bracketed else "none", zorder=3)
    ax.set(xscale="log", xlabel=f"N (parameters, {fitted.params})", ylabel="validation loss (nats/token)",
           title="IsoFLOP curves (approach 2); stars: minima")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def frontier_plot(runs: list[Run], fitted: Estimates, path: Path):
    """Left: every run's loss against its compute, the envelope (approach 1) and the parametric frontier
    (approach 3). Right: N* against C from each approach, with the power laws."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5), dpi=110)
    flops = np.array([r.flops for r in runs])
    c = np.geomspace(flops.min() / 2, flops.max() * 2, 50)
    left.scatter(flops, [r.val_loss for r in runs], color="0.6", s=14, label="runs")
    left.plot([r.flops for r in fitted.envelope], [r.val_loss for r in fitted.envelope], "o-", label="envelope")
    left.plot(c, fitted.law.loss(*fitted.law.optimal(c)), "--", label="approach 3 frontier (C = 6ND)")
    left.set(xscale="log", xlabel="C (training FLOPs)", ylabel="validation loss (nats/token)",
             title="loss against compute")
    left.legend(fontsize=8)
    good = [p for p in fitted.parabolas if p.bracketed]
    points = {"approach 1": ([r.flops for r in fitted.envelope], [r.params(fitted.params) for r in fitted.envelope]),
              "approach 2": ([p.budget for p in good], [p.n_opt for p in good])}
    for label, (x, y) in points.items():
        exponent, coefficient = power_law(x, y)
        line = right.scatter(x, y, label=f"{label}: a = {exponent:.2f}" if np.isfinite(exponent) else label)
        if np.isfinite(exponent):
            right.plot(c, coefficient * c**exponent, color=line.get_facecolor()[0], lw=1)
    law = fitted.law
    right.plot(c, law.optimal(c)[0], "--", color="C2", label=f"approach 3: a = {law.beta / (law.alpha + law.beta):.2f}")
    right.set(xscale="log", yscale="log", xlabel="C (training FLOPs)", ylabel=f"N* ({fitted.params})",
              title="compute-optimal model size")
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
