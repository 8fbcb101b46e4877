"""The fits recover a known law from noisy synthetic runs, their intervals cover it, and thin sweeps are refused."""

import json
import math

import numpy as np
import pytest
from test_scaling_flops import cli_error

from codelm.cli import main
from codelm.scaling.fit import Estimates, Parabola, bootstrap
from codelm.scaling.laws import Law
from codelm.scaling.results import Run, read_table, write_table

TRUE = Law(E=1.8, A=400.0, B=1000.0, alpha=0.34, beta=0.37)
A_TRUE = TRUE.beta / (TRUE.alpha + TRUE.beta)  # N* ~ C^a


def synthetic_runs(budgets=(1e17, 1e18, 1e19, 1e20), sizes=7, noise=0.005, seed=0) -> list[Run]:
    """Runs on each budget's IsoFLOP line from N*/10 to 10 N*, their loss TRUE's times lognormal noise."""
    rng = np.random.default_rng(seed)
    runs = []
    for budget in budgets:
        for i, k in enumerate(np.linspace(-1, 1, sizes)):
            n = TRUE.optimal(budget)[0] * 10**k
            d = budget / (6 * n)
            loss = TRUE.loss(n, d) * math.exp(rng.normal(0, noise))
            runs.append(Run(f"C{budget:.0e}-{i}", budget, i + 1, i + 1, 64, 1, round(n), round(n), round(n),
                            6 * round(n), 100, round(d), budget, "done", loss))
    return runs


def test_parabola_finds_the_minimum_and_knows_when_there_is_none():
    runs = synthetic_runs(budgets=(1e18,), noise=0)
    middle = runs[3].params_total
    runs = [Run(**{**r.__dict__, "val_loss": 3 + (math.log(r.params_total / middle) + 0.5) ** 2}) for r in runs]
    p = Parabola.of(1e18, runs, "total")  # the minimum of 3 at N = middle / sqrt(e), inside the sizes
    assert p.bracketed and p.n_opt == pytest.approx(middle * math.exp(-0.5)) and p.loss_opt == pytest.approx(3)
    falling = [Run(**{**r.__dict__, "val_loss": 5 - math.log(r.params_total)}) for r in runs]  # no U: no minimum
    assert not Parabola.of(1e18, falling, "total").bracketed


def test_fits_recover_the_law_and_the_intervals_cover_it():
    runs = synthetic_runs()
    fitted = Estimates.of(runs, "total")
    numbers = fitted.numbers()
    assert numbers["approach 3: alpha"] == pytest.approx(TRUE.alpha, abs=0.03)
    assert numbers["approach 3: beta"] == pytest.approx(TRUE.beta, abs=0.03)
    assert numbers["approach 3: E"] == pytest.approx(TRUE.E, rel=0.03)
    for approach in ("approach 2: a (N* ~ C^a)", "approach 3: a = beta/(alpha+beta)"):
        assert numbers[approach] == pytest.approx(A_TRUE, abs=0.02)
    intervals = bootstrap(runs, fitted, samples=60, seed=0)
    for name, truth in [("approach 3: alpha", TRUE.alpha), ("approach 3: beta", TRUE.beta), ("approach 3: E", TRUE.E),
                        ("approach 2: a (N* ~ C^a)", A_TRUE), ("approach 3: a = beta/(alpha+beta)", A_TRUE)]:
        lo, hi, used = intervals[name]
        assert lo < truth < hi and used == 60, (name, lo, hi)
        assert hi - lo < 0.2 * truth  # informative, not merely wide


def test_fit_command_writes_the_law_the_card_and_the_plots(tmp_path, capsys):
    write_table(tmp_path, synthetic_runs(), "# synthetic")
    assert [r.val_loss for r in read_table(tmp_path)] == [r.val_loss for r in synthetic_runs()]
    main(["scaling", "fit", str(tmp_path), "--bootstrap", "5", "--out", str(tmp_path / "fit")])
    assert "approach 3: alpha" in capsys.readouterr().out
    law = json.loads((tmp_path / "fit" / "law.json").read_text())
    assert law["alpha"] == pytest.approx(TRUE.alpha, abs=0.03) and law["params"] == "total"
    card = (tmp_path / "fit" / "fit.md").read_text()
    assert "N counted as `non_embedding`" in card and "Huber" not in card  # conventions stated, once
    assert (tmp_path / "fit" / "isoflop.png").stat().st_size > 0 and (tmp_path / "fit" / "frontier.png").is_file()
    main(["scaling", "plan", "--flops", "1e18", "--law", str(tmp_path / "fit" / "law.json")])
    assert "fit of" in capsys.readouterr().out


def test_too_few_points_per_budget_is_one_line(tmp_path, capsys):
    runs = synthetic_runs(budgets=(1e17, 1e18), sizes=3)
    write_table(tmp_path, runs[:-1], "# synthetic")  # the second budget keeps 2 sizes
    line = cli_error(capsys, "scaling", "fit", str(tmp_path))
    assert "too few finished runs per budget" in line and "1e+18 has 2" in line
    write_table(tmp_path, runs[:3], "# synthetic")
    assert "a power law in C needs at least 2" in cli_error(capsys, "scaling", "fit", str(tmp_path))
    assert "no sweep results" in cli_error(capsys, "scaling", "fit", str(tmp_path / "nope"))
