"""What `codelm scaling fit` writes: the three approaches and their intervals as fit.md and fit.json, the
parametric law as law.json (which `codelm scaling plan --law` reads), and the two figures."""

import math
from dataclasses import asdict, replace
from pathlib import Path

from codelm.io import atomic_write_json, atomic_write_text
from codelm.scaling.config import FitConfig
from codelm.scaling.fit import Estimates, bootstrap, check_runs
from codelm.scaling.plots import frontier_plot, isoflop_plot
from codelm.scaling.results import conventions_text, read_table

CAVEATS = """\
## What a small sweep can and cannot show

A few minutes per run on a CPU trains models of 10^5-10^7 parameters on 10^5-10^7 tokens. At that scale the
embedding and the LM head are a large share of every model, so the exponent depends on how N is counted (rerun
with `--params non_embedding` to see Kaplan's convention move it: Pearce & Song 2024); a run's fixed costs
(warmup, the learning rate tuned for one size, the schedule's decay) weigh more on short runs (Porian et al.
2024), and small runs bias fits toward Kaplan-like exponents (N* growing faster than C^0.5). The intervals say how
well these runs pin the numbers down, not how far they extrapolate: a law fitted on 10^12-10^14 FLOPs says little
about 10^21. Losses are in nats per token of this corpus's tokenizer, not comparable with a published E."""


def fmt(x: float) -> str:
    return "-" if not math.isfinite(x) else f"{x:.4g}"


def fit_sweep(cfg: FitConfig) -> str:
    """Fit, bootstrap, write the files; returns the summary table that the CLI prints."""
    source = Path(cfg.results)
    runs = read_table(source)
    check_runs(runs, cfg.params)
    done = [r for r in runs if r.status == "done"]
    out = Path(cfg.out) if cfg.out else (source if source.is_dir() else source.parent)
    out.mkdir(parents=True, exist_ok=True)
    fitted = Estimates.of(done, cfg.params)
    numbers = fitted.numbers()
    intervals = bootstrap(done, fitted, cfg.bootstrap, cfg.seed)
    summary = ["| quantity | estimate | 95% interval | resamples that give it |", "|---|---:|---|---:|"]
    for name, value in numbers.items():
        lo, hi, used = intervals.get(name, (math.nan, math.nan, 0))
        summary.append(f"| {name} | {fmt(value)} | [{fmt(lo)}, {fmt(hi)}] | {used} of {cfg.bootstrap} |")
    minima = ["| budget | lowest-loss run (approach 1) | N* | D* | D*/N* | loss at N* | U-shaped, minimum inside the "
              "sizes |", "|---|---|---:|---:|---:|---:|---|"]
    for best, p in zip(fitted.envelope, fitted.parabolas):
        sizes = sorted(r.params(cfg.params) for r in done if r.budget == p.budget)
        edge = {sizes[0]: " (the smallest size)", sizes[-1]: " (the largest size)"}.get(best.params(cfg.params), "")
        minima.append(f"| {p.budget:.3g} | {best.name}{edge} | {fmt(p.n_opt)} | {fmt(p.d_opt)} | "
                      f"{fmt(p.d_opt / p.n_opt)} | {fmt(p.loss_opt)} | "
                      f"{'yes' if p.bracketed else 'no: left out of the power law'} |")
    atomic_write_json(out / "law.json", asdict(replace(fitted.law, name=f"fit of {source}")))
    atomic_write_json(out / "fit.json", {"source": str(source), "params": cfg.params, "runs": len(done),
                                         "bootstrap": cfg.bootstrap, "seed": cfg.seed, "numbers": numbers,
                                         "intervals": intervals, "parabolas": [asdict(p) for p in fitted.parabolas]})
    isoflop_plot(done, fitted, out / "isoflop.png")
    frontier_plot(done, fitted, out / "frontier.png")
    table = "\n".join(summary)
    atomic_write_text(out / "fit.md", "\n".join([
        "# Scaling-law fit", "",
        f"{len(done)} runs of `{source}` in {len({r.budget for r in done})} budgets; N counted as `{cfg.params}`; "
        f"intervals from {cfg.bootstrap} resamples of the runs within each budget (seed {cfg.seed}).", "",
        "## Conventions", "", conventions_text(), "",
        "## Estimates", "", table, "",
        "## Per budget: the best run and the parabola's minimum", "", *minima, "",
        "![IsoFLOP curves](isoflop.png)", "", "![Loss and N* against compute](frontier.png)", "",
        CAVEATS, ""]))
    return table + f"\n\nfit -> {out}/fit.md, fit.json, law.json, isoflop.png, frontier.png"
