"""`codelm scaling`: FLOPs accounting and compute-optimal sizes (plan), IsoFLOP sweeps, Chinchilla fits."""

from pathlib import Path

from codelm.cli.options import Settings, add_command, add_group, resolve, sections_root, write_config
from codelm.config import RECIPE_SECTIONS, Config
from codelm.scaling.config import TRAINING_CONFIG, FitConfig, SweepConfig

PLAN = Settings(Config, RECIPE_SECTIONS["pretrain"], default_file=TRAINING_CONFIG)
SWEEP = Settings(sections_root("sweep", sweep=SweepConfig), ("sweep",), every_field=True,
                 flags={"--training-config": "sweep.config", "--train-set": "sweep.overrides"})
FIT = Settings(sections_root("fit", fit=FitConfig), ("fit",), every_field=True, positional={"RESULTS": "fit.results"})


def scaling(sub, name, text):
    group = add_group(sub, name, text)
    plan = add_command(group, "plan", "a config's exact FLOPs per token beside 6N, and the compute-optimal N, D for "
                       "a budget", (
                           "Count a config's parameters three ways (total, non-embedding, matmul), its exact training "
                           "FLOPs per token beside 6N, the tokens a budget buys it, and the compute-optimal model size "
                           "and tokens for the budget under a scaling law."), run_plan, PLAN)
    plan.add_argument("--flops", type=float, required=True, help="the compute budget in training FLOPs, e.g. 1e21")
    plan.add_argument("--law", default="chinchilla", help="chinchilla (Hoffmann et al. 2022), besiroglu (their "
                      "2024 refit), or a law.json from `codelm scaling fit` (default %(default)s)")
    add_command(group, "sweep", "train an IsoFLOP grid (budgets x depths) to budget; resumable", (
                                 "Train every budget x depth of one model family (depth d: d layers of width "
                                 "ASPECT x d, d heads) with the shared trainer, each for budget / exact FLOPs per "
                                 "token, into OUT/runs/NAME; finished runs are skipped, interrupted ones resume. "
                                 "Writes OUT/results.csv, OUT/results.md and OUT/sweep.toml (the settings). Runs "
                                 "set train.compile=false and validate only at the end, before --train-set."),
                run_sweep, SWEEP)
    add_command(group, "fit", "Chinchilla's three approaches on a sweep, bootstrap intervals, plots", (
                               "Approach 1 (the lowest-loss run per budget), approach 2 (a parabola in ln N per "
                               "budget, minima fitted as power laws in C) and approach 3 (L = E + A/N^alpha + "
                               "B/D^beta, Huber loss, L-BFGS from a grid of starts) with bootstrap intervals; "
                               "writes fit.md, fit.json, law.json, fit.toml (the settings), isoflop.png and "
                               "frontier.png."), run_fit, FIT)


def run_plan(args):
    from codelm.scaling.laws import load_law
    from codelm.scaling.plan import plan_text

    print(plan_text(resolve(args), args.flops, load_law(args.law)))


def run_sweep(args):
    from codelm.scaling.sweep import run_sweep as sweep

    root = resolve(args)
    cfg = root.sweep
    runs = sweep(cfg)
    write_config(root, SWEEP, Path(cfg.out) / "sweep.toml")
    if not cfg.emit_commands:
        print(f"{sum(r.status == 'done' for r in runs)} of {len(runs)} runs done -> {cfg.out}/results.csv, results.md")


def run_fit(args):
    from codelm.scaling.analysis import fit_sweep

    root = resolve(args)
    cfg = root.fit
    text = fit_sweep(cfg)
    source = Path(cfg.results)
    write_config(root, FIT, Path(cfg.out or (source if source.is_dir() else source.parent)) / "fit.toml")
    print(text)
