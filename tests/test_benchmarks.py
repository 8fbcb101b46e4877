"""MBPP (full and sanitized) and EvalPlus (HumanEval+, MBPP+) from fixtures in their published file formats: they
load as tasks, their reference solutions pass in the sandbox, wrong programs fail, EvalPlus's comparison rules hold,
and decontamination and the contamination report read them."""

import gzip
import shutil
from pathlib import Path

import pytest

from codelm.config import EvalConfig
from codelm.data.decontam import file_items
from codelm.errors import UserError
from codelm.eval.runner import Evaluation
from codelm.sandbox.supervisor import run_many
from codelm.tasks import evalplus, humaneval, mbpp
from codelm.tasks.collection import outcome, program, validate

FIXTURES = Path(__file__).parent / "fixtures" / "benchmarks"


def run(tasks: list[dict], completions: list[str]) -> list[str]:
    results = run_many([program(t, c) for t, c in zip(tasks, completions)], evalplus.LIMITS, workers=2)
    return [outcome(r) for r in results]


def test_mbpp_files_load_as_tasks_whose_references_pass():
    full, sanitized = mbpp.load(FIXTURES / "mbpp.jsonl"), mbpp.load(FIXTURES / "sanitized-mbpp.json")
    assert [t["task_id"] for t in full] == ["Mbpp/1", "Mbpp/3", "Mbpp/4"]
    assert [t["entry_point"] for t in sanitized] == ["similar_elements", "circle_circumference"]  # not math.isclose
    first = full[0]
    assert first["prompt"].startswith("def min_cost(cost, m, n):\n") and humaneval.defines(first["prompt"], "min_cost")
    assert "assert min_cost([[1, 2, 3], [4, 8, 2], [1, 5, 3]], 2, 2) == 8" in first["prompt"]  # one example shown
    assert "== 12" not in first["prompt"] and "== 12" in first["test"]  # the other asserts stay hidden
    assert "\r" not in first["canonical_solution"] and "R = 3" in first["canonical_solution"]  # helpers kept
    assert "import math" in sanitized[1]["test"]  # test_imports, for math.isclose
    validate(full + sanitized, workers=2)  # every reference passes its own tests in the sandbox
    wrong = ["    return 0\n", "    return n % 2 == 0\n", "    return sorted(nums)[:n]\n"]
    assert run(full, wrong) == ["failed"] * 3


def test_a_chat_reply_to_an_mbpp_task_is_scored_like_humaneval():
    task = mbpp.load(FIXTURES / "sanitized-mbpp.json")[0]
    reply = "Sure:\n```python\ndef similar_elements(a, b):\n    return tuple(set(a) & set(b))\n```\nDone."
    assert run([task], [humaneval.chat_completion(task, reply)]) == ["passed"]


def test_evalplus_files_load_with_their_inputs_rebuilt_and_references_pass(tmp_path):
    packed = tmp_path / "HumanEvalPlus.jsonl.gz"  # EvalPlus publishes gzipped JSONL
    with open(FIXTURES / "HumanEvalPlus.jsonl", "rb") as src, gzip.open(packed, "wb") as dst:
        shutil.copyfileobj(src, dst)
    plus = evalplus.load(packed) + evalplus.load(FIXTURES / "MbppPlus.jsonl")
    assert [t["task_id"] for t in plus] == ["HumanEval/0", "HumanEval/32", "Mbpp/2", "Mbpp/139", "Mbpp/787"]
    similar = plus[2]
    assert similar["test_inputs"][0] == [(3, 4, 5, 6), (5, 7, 4, 10)]  # MBPP+ stores these tuples as JSON lists
    assert similar["prompt"].startswith("def similar_elements(test_tup1, test_tup2):\n")
    assert len(plus[0]["test_inputs"]) == 12  # base and plus inputs together
    validate(plus, workers=2)
    wrong = ["    return False\n", "    return 0.0\n", "\ndef similar_elements(a, b):\n    return (min(a),)\n",
             "\ndef circle_circumference(r):\n    return 6.28 * r\n",
             "\ndef text_match_three(text):\n    return text.startswith('ab')\n"]
    assert run(plus, wrong) == ["failed"] * 5
    other_root = "    return 3.0 if xs == [-6, 11, -6, 1] else _find(xs)\n"  # find_zero's oracle: any root passes
    helper = plus[1]["prompt"].replace("def find_zero(", "def _find(") + plus[1]["canonical_solution"]
    assert run([plus[1]], [other_root + "\n\n" + helper]) == ["passed"]
    either_order = "\ndef similar_elements(a, b):\n    return tuple(sorted(set(a) & set(b), reverse=True))\n"
    match_or_none = "\nimport re\ndef text_match_three(text):\n    return re.search('abbb', text) and 'found'\n"
    assert run(plus[2:], [either_order, "    return 2 * 3.141592653589793 * r\n", match_or_none]) == ["passed"] * 3


def test_evalplus_comparison_follows_its_check_output():
    same = evalplus.same_output
    assert same((1,), 0.1 + 0.2, 0.3, 0, "")  # floats: atol 1e-6 when the task gives 0
    assert not same((1,), 0.31, 0.3, 0, "") and not same((1,), 1, 1.0000001, 0, "")  # a type change is not close
    assert same((1,), [1.0, 2.0000001], [1.0, 2.0], 0, "") and not same((1,), [1.0], [1.0, 2.0], 0, "")
    assert same((1,), (2, 1), (1, 2), 0, "set") and not same((1,), (2, 1), (1, 2), 0, "")
    assert same(("ac",), None, False, 0, "not_none") and same(("abbb",), "match", True, 0, "not_none")
    assert same(([1, 2],), -0.5, 0, 1e-6, "find_zero") and not same(([1, 2],), 0.5, 0, 1e-6, "find_zero")
    assert evalplus.oracle("Mbpp/295", "sum_div") == "or_zero" and evalplus.oracle("HumanEval/2", "sum_div") == ""


def test_benchmark_files_that_are_missing_or_malformed_are_named(tmp_path):
    with pytest.raises(UserError, match="MBPP file not found"):
        mbpp.load(tmp_path / "mbpp.jsonl")
    (tmp_path / "bad.jsonl").write_text('{"task_id": "Mbpp/2", "prompt": "x"}\n')
    with pytest.raises(UserError, match="bad.jsonl row 1: an EvalPlus task needs .* missing entry_point"):
        evalplus.load(tmp_path / "bad.jsonl")
    with pytest.raises(UserError, match="task mbpp\\+ needs --mbpp-plus FILE"):
        EvalConfig(checkpoint="ckpt", tasks=["mbpp+"]).check()


def test_decontamination_and_the_contamination_report_read_the_benchmark_files(tmp_path):
    parts = file_items(str(FIXTURES / "sanitized-mbpp.json")) + file_items(str(FIXTURES / "MbppPlus.jsonl"))
    kinds = {(item, kind) for item, kind, _ in parts}
    assert {("2", "prompt"), ("2", "code"), ("Mbpp/787", "canonical_solution")} <= kinds
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    code = mbpp.load(FIXTURES / "mbpp.jsonl")[0]["canonical_solution"]
    (corpus / "copied.py").write_text("# found on the web\n" + code)
    report = Evaluation(EvalConfig(checkpoint=None, tasks=["contamination"], corpus=[str(corpus)],
                                   mbpp=str(FIXTURES / "mbpp.jsonl"), out=str(tmp_path / "eval"))).run()
    flagged = [o.item for o in report.tasks["contamination"].items if o.flagged]
    assert flagged == ["mbpp:Mbpp/1"]
