"""Infilling tasks derived from HumanEval's canonical solutions (Bavarian et al. 2022; Fried et al. 2022, InCoder).

Deterministic: for each problem, the solution's non-empty lines are indexed.
- single-line: each non-empty line is the middle once (1,033 tasks);
- multi-line: each contiguous run of non-empty lines, from line a through line b
  (a <= b, blank lines between them included), is the middle once (5,815 tasks).
The prefix is the prompt plus the lines before the middle, the suffix the lines
after it; putting the middle back gives prompt + canonical solution exactly.
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class InfillTask:
    task_id: str  # e.g. "HumanEval/0/single/3" or "HumanEval/0/multi/2-5"
    problem_id: str
    prefix: str
    middle: str
    suffix: str


def _split(problem: dict) -> tuple[list[str], list[int]]:
    lines = problem["canonical_solution"].splitlines(keepends=True)
    return lines, [i for i, line in enumerate(lines) if line.strip()]


def _task(problem: dict, lines: list[str], start: int, end: int, task_id: str) -> InfillTask:
    return InfillTask(task_id, problem["task_id"], problem["prompt"] + "".join(lines[:start]),
                      "".join(lines[start:end]), "".join(lines[end:]))


def single_line_tasks(problems: list[dict]) -> list[InfillTask]:
    tasks = []
    for p in problems:
        lines, nonempty = _split(p)
        tasks += [_task(p, lines, i, i + 1, f"{p['task_id']}/single/{i}") for i in nonempty]
    return tasks


def multi_line_tasks(problems: list[dict]) -> list[InfillTask]:
    tasks = []
    for p in problems:
        lines, nonempty = _split(p)
        for a, start in enumerate(nonempty):
            for end_line in nonempty[a:]:
                tasks.append(_task(p, lines, start, end_line + 1, f"{p['task_id']}/multi/{start}-{end_line}"))
    return tasks
