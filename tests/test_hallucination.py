"""Hallucination checks: real APIs pass, planted fake ones are flagged (statically and by the sandbox probe),
runtime errors are sorted by kind, and the evaluation reports how flags go with failing."""

import json

import pytest
from test_eval import AnswerKey

from codelm.config import EvalConfig
from codelm.eval import hallucination
from codelm.eval.runner import Evaluation
from codelm.sandbox.supervisor import run_many
from codelm.tasks.humaneval import load_problems

REAL = '''import json, math, os.path
from collections import Counter
from itertools import chain as joined


def f(text, items):
    counts = Counter(text)
    path = os.path.join("a", "b")
    return json.dumps(counts, indent=2, sort_keys=True), math.sqrt(2), list(joined(items, [path])), len(items)
'''
FAKE = '''import json, math
import numpy_that_does_not_exist
from os.path import joinpath


def f(x):
    data = json.loads_file(x)
    return math.sqrt(1, 2) + data + helper(x) + math.floor(2.5)
'''


def flags_of(program: str) -> list[list[str]]:
    found, code = hallucination.probe(program)
    if code is not None:
        [result] = run_many([(code, "")])
        found += hallucination.probe_flags(result.stdout)
    return sorted(found)


def test_real_apis_pass_and_planted_fake_ones_are_flagged():
    assert flags_of(REAL) == []
    assert flags_of(FAKE) == [["arity", "math.sqrt/2+"], ["attribute", "json.loads_file"],
                              ["attribute", "os.path.joinpath"], ["import", "numpy_that_does_not_exist"],
                              ["name", "helper"]]
    assert flags_of("def f(:\n") == []  # a syntax error is not a hallucination
    assert flags_of("import json\n\ndef f(*a, **k):\n    return json.dumps(*a, **k)\n") == []  # arity unknown


@pytest.mark.parametrize("program, kind", [
    ("print(undefined_name)", "name"),
    ("import numpy_that_does_not_exist", "import"),
    ("import json\njson.loads_file('x')", "attribute"),
    ("def g(a):\n    return a\ng(1, 2)", "arity"),
    ("assert 1 == 2", "logic"),
    ("raise ValueError('no')", "logic"),
    ("while True:\n    pass", "timeout"),
    ("print('fine')", None),
])
def test_runtime_errors_are_sorted_by_kind(program, kind):
    from codelm.sandbox.supervisor import Limits

    [result] = run_many([(program, "")], Limits(cpu_seconds=1, wall_seconds=3))
    assert hallucination.runtime_kind(result.status, result.detail) == kind


def test_the_evaluation_reports_flags_and_how_they_predict_failure(code_tok, tmp_path):
    problems = load_problems()[:4]
    answers = {problems[0]["prompt"]: problems[0]["canonical_solution"],
               problems[1]["prompt"]: "    import json\n    return json.loads_file(paren_string)\n",
               problems[2]["prompt"]: "    return helper(number)\n",
               problems[3]["prompt"]: "    return None\n"}
    results = Evaluation(EvalConfig(checkpoint="answer key", limit=4, out=str(tmp_path)),
                         engine=AnswerKey(code_tok, answers)).run().tasks["humaneval"]
    rows = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert [r["hallucinations"] for r in rows] == [[], [["attribute", "json.loads_file"]], [["name", "helper"]], []]
    assert [r["failure"] for r in rows] == [None, "attribute", "name", "logic"]
    report = results.hallucination
    assert (report.samples, report.failures, report.flagged) == (4, 3, 0.5)
    assert report.failures_flagged == report.failures_hallucinated == pytest.approx(2 / 3)
    assert report.auroc == pytest.approx(2.5 / 3) and report.failures_runtime == {"attribute": 1, "name": 1, "logic": 1}
    assert "hallucination flags on 50% of 4 programs" in results.summary()
