"""Tests the model writes for a problem, and CodeT's dual agreement (Chen et al., ICLR 2023) that uses them.

CodeT asks the model for test cases as well as for solutions, and trusts the
solutions that agree both with many tests and with many other solutions. The
tests come from the model alone, prompted with the problem as shown: the hidden
tests are never read (a model-written test may happen to call the function as
a hidden test does; it is still the model's own claim about the answer). A test
here is an `assert f(args) == expected` line whose arguments and expected value
are literals: it runs as one more input of the behaviour probe
(codelm.tasks.behaviour), and a program passes it when what it returns has the
expected value's canonical form.

Dual agreement: programs that pass the same set of tests form a consensus set,
scored by (programs in it) x (tests they pass); the answer is the first-drawn
program of the best set. When no program passes any test the score says
nothing, and the behaviour vote (codelm.eval.uncertainty.majority) decides.
"""

import ast
import re

from codelm.tasks.behaviour import canonical, value_outcome

MAX_TESTS = 10  # per problem, in the order written; CodeT samples many more, one greedy reply keeps it cheap
MAX_NEW_TOKENS = 256  # room for the tests' lines (a chat reply's preamble included)
BASE_PROMPT = "{prompt}    pass\n\n\n# check the correctness of {entry}\nassert {entry}("  # CodeT's own prompt
CHAT_INSTRUCTION = ("Write {count} different test cases for the following Python function, each one line "
                    "`assert {entry}(...) == ...` with literal arguments and the expected result, in one ```python "
                    "code block. Do not implement the function.\n\n```python\n{prompt}```")
_ASSERT = re.compile(r"^\s*assert\b.*$", re.M)


def base_prompt(problem: dict) -> str:
    """The text a base model continues with tests (the completion continues the first assert)."""
    return BASE_PROMPT.format(prompt=problem["prompt"], entry=problem["entry_point"])


def chat_messages(problem: dict) -> list[dict]:
    """The chat asking an instruction-tuned model for tests."""
    text = CHAT_INSTRUCTION.format(count=MAX_TESTS // 2, entry=problem["entry_point"], prompt=problem["prompt"])
    return [{"role": "user", "content": text}]


def completion_text(problem: dict, completion: str, chat: bool) -> str:
    """The tests as written: a base model's completion continues the prompt's open `assert f(`."""
    return completion if chat else f"assert {problem['entry_point']}(" + completion


def parse_tests(text: str, entry_point: str) -> list[tuple[tuple, object]]:
    """(arguments, expected value) of every `assert entry_point(literals) == literal` line, distinct, in order,
    at most MAX_TESTS; other lines (other calls, `is`, non-literal values, broken syntax) are skipped."""
    tests, seen = [], set()
    for line in _ASSERT.findall(text):
        try:
            node = ast.parse(line.strip()).body[0]
        except (SyntaxError, IndexError, ValueError, MemoryError, RecursionError):
            continue
        compare = node.test if isinstance(node, ast.Assert) else None
        if not (isinstance(compare, ast.Compare) and len(compare.ops) == 1 and isinstance(compare.ops[0], ast.Eq)):
            continue
        call, expected = compare.left, compare.comparators[0]
        if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id == entry_point
                and not call.keywords):
            continue
        try:
            test = tuple(ast.literal_eval(arg) for arg in call.args), ast.literal_eval(expected)
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            continue
        if canonical(test) not in seen:
            seen.add(canonical(test))
            tests.append(test)
    return tests[:MAX_TESTS]


def as_text(test: tuple[tuple, object], entry_point: str) -> str:
    """A parsed test as the line it stands for (what OUT/uncertainty.jsonl shows)."""
    args, expected = test
    return f"assert {entry_point}({', '.join(map(repr, args))}) == {expected!r}"


def passes(vector: tuple[str, ...], tests: list[tuple[tuple, object]]) -> tuple[bool, ...]:
    """Which tests a program passes, from its outcomes on the tests' arguments (in the tests' order)."""
    return tuple(found == value_outcome(expected) for found, (_, expected) in zip(vector, tests, strict=True))


def dual_agreement(passed: list[tuple[bool, ...]]) -> int | None:
    """The program CodeT picks: the first-drawn of the consensus set with the highest programs x tests passed;
    None when no program passes any test."""
    sets: dict[tuple[bool, ...], int] = {}
    for tests_passed in passed:
        sets[tests_passed] = sets.get(tests_passed, 0) + 1
    score = {key: count * sum(key) for key, count in sets.items()}
    best = max(score.values(), default=0)
    if best == 0:
        return None
    return next(i for i, tests_passed in enumerate(passed) if score[tests_passed] == best)
