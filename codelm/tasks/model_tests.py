"""Tests the model writes for a problem, and CodeT's dual agreement (Chen et al., ICLR 2023) that uses them.

CodeT asks the model for test cases as well as for solutions, and trusts the
solutions that agree both with many tests and with many other solutions. The
tests come from the model alone, prompted with the problem as shown: the hidden
tests are never read (a model-written test may happen to call the function as
a hidden test does; it is still the model's own claim about the answer). A test
here is an `assert f(args) == expected` line (or `is True`, or a bare
`assert f(args)`: parse_tests) whose arguments and expected value are
literals: it runs as one more input of the behaviour probe
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
MAX_NEW_TOKENS = 256  # room for MAX_TESTS lines of a few dozen tokens
OPENING = "assert {entry}("  # where the model's text begins, in either prompt: it can only go on writing a test
BASE_PROMPT = "{prompt}    pass\n\n\n# check the correctness of {entry}\n" + OPENING  # CodeT's own prompt
CHAT_INSTRUCTION = ("Write {count} different test cases for the following Python function, each one line "
                    "`assert {entry}(...) == ...` with literal arguments and the expected result, in one ```python "
                    "code block. Do not implement the function.\n\n```python\n{prompt}```")
# the reply is begun for the model: asked for tests, a small chat model (SmolLM2-135M) implements the function
REPLY_START = "```python\n" + OPENING
_ASSERT = re.compile(r"^\s*assert\b.*$", re.M)


def base_prompt(problem: dict) -> str:
    """The text a base model continues with tests (the completion continues the first assert)."""
    return BASE_PROMPT.format(prompt=problem["prompt"], entry=problem["entry_point"])


def chat_messages(problem: dict) -> list[dict]:
    """The chat asking an instruction-tuned model for tests (its reply begins with reply_start)."""
    text = CHAT_INSTRUCTION.format(count=MAX_TESTS // 2, entry=problem["entry_point"], prompt=problem["prompt"])
    return [{"role": "user", "content": text}]


def reply_start(problem: dict) -> str:
    """The start of the chat reply, written after the chat prompt for the model to continue."""
    return REPLY_START.format(entry=problem["entry_point"])


def completion_text(problem: dict, completion: str) -> str:
    """The tests as written: the completion continues the prompt's open `assert f(`."""
    return OPENING.format(entry=problem["entry_point"]) + completion


def parse_tests(text: str, entry_point: str) -> list[tuple[tuple, object]]:
    """(arguments, expected value) of every test line, distinct, in order, at most MAX_TESTS. A test line is
    `assert f(literals) == literal`, `assert f(...) is True|False|None`, or `assert f(...)` / `assert not f(...)`
    (expected exactly True / False, as a predicate returns); other lines (other calls, keyword arguments,
    non-literal values, chained comparisons, broken syntax) are skipped."""
    tests, seen = [], set()
    for line in _ASSERT.findall(text):
        try:
            node = ast.parse(line.strip()).body[0]
        except (SyntaxError, IndexError, ValueError, MemoryError, RecursionError):
            continue
        test = _claim(node.test, entry_point) if isinstance(node, ast.Assert) else None
        if test is not None and canonical(test) not in seen:
            seen.add(canonical(test))
            tests.append(test)
    return tests[:MAX_TESTS]


def _claim(node: ast.expr, entry_point: str) -> tuple[tuple, object] | None:
    """What an assert's condition says the entry point returns, as (arguments, value); None if it says nothing
    this module can check."""
    call, expected = node, ast.Constant(True)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        call, expected = node.operand, ast.Constant(False)
    elif isinstance(node, ast.Compare):
        if len(node.ops) != 1:
            return None
        call, expected = node.left, node.comparators[0]
        singleton = isinstance(expected, ast.Constant) and expected.value in (True, False, None)
        if not (isinstance(node.ops[0], ast.Eq) or isinstance(node.ops[0], ast.Is) and singleton):
            return None
    if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id == entry_point
            and not call.keywords):
        return None
    try:
        return tuple(ast.literal_eval(arg) for arg in call.args), ast.literal_eval(expected)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return None


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
