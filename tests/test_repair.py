"""Self-repair: the examples a prompt states become visible checks, their failures the feedback; the hidden tests
score every round and are never shown; the baseline spends the same budget on independent samples."""

import json

import pytest
from test_eval import AnswerKey

from codelm.config import EvalConfig
from codelm.errors import UserError
from codelm.eval import repair
from codelm.eval.runner import Evaluation
from codelm.sandbox.supervisor import Limits, run_many
from codelm.tasks.humaneval import load_problems

PROMPT = '''def f(xs, k):
    """Stated results in every spelling the checks read.
    >>> f([1, 2], 3)
    6
    f([0], 1) == 1
    f([5], 2) ➞ [5, 5]
    f([], 0) ==> true
    round(f([2], 2), 1)   # returns 4.0
    g(1) == 2
    f(x) == something you compute
    """
'''


def test_visible_checks_read_the_stated_examples():
    checks = repair.visible_checks(PROMPT, "f")
    assert [(c.call, c.expected) for c in checks] == [
        ("f([1, 2], 3)", "6"), ("f([0], 1)", "1"), ("f([5], 2)", "[5, 5]"), ("f([], 0)", "True"),
        ("round(f([2], 2), 1)", "4.0")]  # g is not the entry point; `something you compute` is not a literal


def test_feedback_says_what_was_returned_raised_or_timed_out():
    checks = [repair.Check("f(2)", "4"), repair.Check("f(3)", "9")]
    limits = Limits(cpu_seconds=1, wall_seconds=3)
    wrong, raising, looping, right = run_many([
        ("def f(x):\n    return x + x\n", repair.check_code(checks)),
        ("def f(x):\n    return helper(x)\n", repair.check_code(checks)),
        ("def f(x):\n    while True:\n        pass\n", repair.check_code(checks)),
        ("def f(x):\n    return x * x\n", repair.check_code(checks))], limits)
    assert repair.feedback(wrong) == "f(3) returned 6, expected 9"  # f(2) passed: not mentioned
    assert "f(2) raised:" in repair.feedback(raising) and "NameError: name 'helper'" in repair.feedback(raising)
    assert "did not finish in time" in repair.feedback(looping) and right.status == "passed"


def test_follow_up_turns_for_chat_and_base():
    chat = repair.follow_up([{"role": "user", "content": "solve"}], "```python\nx\n```", "f(1) returned 2", "P")
    assert [m["role"] for m in chat] == ["user", "assistant", "user"] and "f(1) returned 2" in chat[2]["content"]
    base = repair.follow_up("def f():\n", "    return 2\n", "f() returned 2, expected 3", "def f():\n")
    assert base == ("def f():\n    return 2\n\n# The code above fails these examples:\n"
                    "# f() returned 2, expected 3\n# A fixed version:\ndef f():\n")


class Repairable(AnswerKey):
    """Answers a first prompt with `first`, a follow-up (which ends with the problem's prompt again) with `fixed`;
    remembers every prompt it was shown."""

    def __init__(self, tok, problems, first, fixed):
        super().__init__(tok, {})
        self.problems, self.first, self.fixed, self.seen = problems, first, fixed, []

    def generate(self, prompts, params, grammar=None):
        assert grammar is None  # no constraint here
        from codelm.inference.engine import Completion

        out = []
        for ids in prompts:
            text = self.tok.decode(ids)
            self.seen.append(text)
            problem = next(p for p in self.problems if text.endswith(p["prompt"]))
            answers = self.fixed if "# The code above fails" in text else self.first
            out.append([Completion(answers[problem["task_id"]], [], finish_reason="stop")] * params.n)
        return out


def test_repair_rounds_see_only_visible_checks_and_every_round_is_scored(code_tok, tmp_path):
    problems = load_problems()[:4]
    ids = [p["task_id"] for p in problems]
    first = {ids[0]: "    return None\n", ids[1]: problems[1]["canonical_solution"],
             ids[2]: "    return 0.5\n",  # passes the one stated example (3.5 -> 0.5), fails the hidden tests
             ids[3]: "    return None\n"}
    fixed = {ids[0]: problems[0]["canonical_solution"], ids[1]: "unused", ids[2]: "unused", ids[3]: "    return 1\n"}
    engine = Repairable(code_tok, problems, first, fixed)
    results = Evaluation(EvalConfig(checkpoint="scripted", limit=4, repair=2, out=str(tmp_path)),
                         engine=engine).run().tasks["humaneval"]
    report = results.repair
    assert report.pass_at_1 == [0.25, 0.5, 0.5] and results.pass_at_k == {"1": 0.5}  # the final answers
    assert report.visible_pass == [0.5, 0.75, 0.75] and (report.repaired, report.broken) == (1, 0)
    assert report.baseline_samples == 3 and report.baseline_pass_at_1 == 0.25  # the same answer 3 times
    follow_ups = [t for t in engine.seen if "# The code above fails" in t]
    assert len(follow_ups) == 3  # problem 0 once (then fixed), problem 3 twice; problem 2 passed its example
    assert any("# has_close_elements([1.0, 2.0, 3.0], 0.5) returned None, expected False" in t for t in follow_ups)
    hidden_only = "[1.0, 2.0, 3.9, 4.0, 5.0, 2.2], 0.3"  # in HumanEval/0's tests, not in its prompt
    assert hidden_only in problems[0]["test"] and not any(hidden_only in t for t in engine.seen)
    rows = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and rows[0]["status"] == "passed" and len(rows[3]["rounds"]) == 2
    assert rows[0]["rounds"][0]["feedback"].startswith("has_close_elements(")


def test_repair_needs_one_final_answer_per_problem():
    with pytest.raises(UserError, match="--repair R needs"):
        EvalConfig(checkpoint="x", repair=2, n=5).check()
