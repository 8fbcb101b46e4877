"""Hallucination checks on an evaluation's saved programs: the flags, the failures by kind, the flag's AUROC.

    python bench/hallucination.py OUT/samples.jsonl [...]

Reads `codelm eval`'s samples.jsonl (HumanEval rows: task id and completion), checks and runs every program
again as `codelm eval` does (codelm.eval.hallucination, the sandbox), and prints the report per file. For
rescoring runs made before the checks existed; a new `codelm eval` reports the same in its results.json.
"""

import json
import sys
from pathlib import Path

from codelm.config import EvalConfig
from codelm.eval import hallucination
from codelm.eval.runner import Evaluation
from codelm.tasks import humaneval


def main():
    problems = {p["task_id"]: p for p in humaneval.load_problems()}
    for path in sys.argv[1:]:
        rows = [json.loads(line) for line in Path(path).read_text().splitlines()]
        rows = [{k: v for k, v in r.items() if k not in ("status", "error", "hallucinations", "failure")}
                for r in rows if r.get("finish_reason") != "skipped" and r["id"] in problems]
        jobs = [humaneval.job(problems[r["id"]], r["completion"]) for r in rows]
        evaluation = Evaluation(EvalConfig(tasks=["contamination"], corpus=["unused"]))  # no model needed
        evaluation.execute(rows, jobs)
        report = hallucination.report(rows)
        print(f"{path}\n{report.summary()}\n{json.dumps(report.__dict__)}")


if __name__ == "__main__":
    main()
