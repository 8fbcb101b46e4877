"""Self-repair from execution feedback (Self-Debugging, Chen et al. 2023): run a program on the checks the model
was shown, and when it fails them, show the model what went wrong and let it answer again.

The visible checks are the examples the prompt states with their results (HumanEval's `>>> f(x)` followed by
the value, `f(x) == y`, `f(x) ➞ y`, MBPP's example assert), or, with --codet, the tests the model wrote. The
hidden tests are never run for feedback and never shown: they score the answer of every round. Feedback is
each failing check's call with the value it returned and the value expected, or the exception with the last
frames of its traceback, or the time limit.

The follow-up turn, for a chat model: the conversation so far, the reply, then a user message with the feedback
asking for the whole function again (REPAIR_TURN). For a base model: the program as it was, the feedback as
comments, and the problem's prompt again to be completed anew (REPAIR_COMMENT):

    <the prompt and the failed completion>

    # The code above fails these examples:
    # candidate([1, 2]) returned 4, expected 3
    # A fixed version:
    <the prompt again>

The fair baseline spends the same generation budget without feedback: R + 1 independent samples, and the
first that passes the visible checks (else the first) is the answer.
"""

import ast
import re
from dataclasses import dataclass

from codelm.sandbox.supervisor import Result

REPAIR_TURN = ("Your code fails these examples from the problem:\n\n{feedback}\n\nFix it. Reply with the complete "
               "function, including the imports it needs, in one ```python code block.")
REPAIR_COMMENT = "\n\n# The code above fails these examples:\n{feedback}\n# A fixed version:\n"
STATED = re.compile(r"^\s*(?:>>>\s*)?(?P<call>.+?)\s*(?:==>|==|➞|=>|->|#\s*returns)\s*(?P<value>.+?)\s*$")
SPELLED = {"true": "True", "false": "False", "none": "None", "null": "None"}  # as some prompts write them
FEEDBACK_CHARS = 1200  # per round: a model's context is small and the first failures say the most


@dataclass
class Check:
    call: str  # source text of the call, e.g. "add(1, 2)"
    expected: str  # source text of a literal, e.g. "3"


def visible_checks(prompt: str, entry_point: str) -> list[Check]:
    """The examples a prompt states with their results: `>>> call` and the value on the next line, or
    `call == value` (also ==>, ➞, =>, ->, `# returns`) on one line; only expressions that call the entry point
    and values that are literals."""
    lines = prompt.splitlines()
    found = []
    for i, line in enumerate(lines):
        text = line.strip()
        if text.startswith(">>>") and i + 1 < len(lines) and entry_point + "(" in text:
            call, value = text[3:].strip(), lines[i + 1].strip()
            if value and not value.startswith(">>>") and not STATED.match(text):
                found.append(Check(call, value))
                continue
        match = STATED.match(text.removeprefix("assert ").strip())
        if match:
            value = match["value"].rstrip(".,;")
            found.append(Check(match["call"], SPELLED.get(value.lower(), value)))
    return [c for c in found if _is_call(c.call, entry_point) and _is_literal(c.expected)]


def _is_call(text: str, entry_point: str) -> bool:
    """An expression that calls the entry point (`f(x)`, `round(f(x), 2)`)."""
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError:
        return False
    return any(isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == entry_point
               for n in ast.walk(tree))


def _is_literal(text: str) -> bool:
    try:
        ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return False
    return True


def check_code(checks: list[Check]) -> str:
    """Test code that runs every check and fails with all of their failures in one AssertionError."""
    lines = ["import traceback as _tb", "_failures = []"]
    for c in checks:
        lines += [
            "try:",
            f"    _got = {c.call}",
            f"    if not (_got == {c.expected}):",
            f"        _failures.append({c.call!r} + ' returned ' + repr(_got) + ', expected ' + {c.expected!r})",
            "except Exception:",
            f"    _failures.append({c.call!r} + ' raised:\\n' + _tb.format_exc(limit=-3).strip())",
        ]
    lines.append("assert not _failures, '\\n'.join(_failures)")
    return "\n".join(lines) + "\n"


def feedback(result: Result) -> str:
    """What the model is told of a failed run of the visible checks."""
    if result.status == "timeout":
        return f"the program did not finish in time ({result.detail}): an endless loop, or far too slow"
    detail = result.detail.removeprefix("AssertionError: ").strip()
    return (detail or result.stderr.strip() or result.status)[:FEEDBACK_CHARS]


def follow_up(turn: list[dict] | str, answer: str, told: str, prompt: str) -> list[dict] | str:
    """The next turn after a failed answer: for a chat (messages), the reply and a user message with the
    feedback; for a base prompt (text), the answer, the feedback as comments and the problem's prompt again."""
    if isinstance(turn, list):
        return [*turn, {"role": "assistant", "content": answer},
                {"role": "user", "content": REPAIR_TURN.format(feedback=told)}]
    comments = "\n".join("# " + line for line in told.splitlines())
    return turn + answer.rstrip() + REPAIR_COMMENT.format(feedback=comments) + prompt


@dataclass
class RepairReport:
    """Pass@1 on the hidden tests after each round of repair, beside best-of-(R+1) at the same budget."""

    rounds: int
    pass_at_1: list[float]  # after round 0 (no repair), 1, ..., R
    visible_pass: list[float]  # share of problems whose answer passes its visible checks, per round
    repaired: int  # problems that fail the hidden tests at round 0 and pass them after the last round
    broken: int  # problems that pass at round 0 and fail after the last round
    without_checks: int  # problems whose prompt states no checkable example (never repaired)
    baseline_samples: int  # R + 1
    baseline_temperature: float
    baseline_pass_at_1: float  # the first of R + 1 samples that passes the visible checks, else the first
    baseline_visible_pass: float

    def summary(self) -> str:
        rounds = ", ".join(f"R={r} {p:.3f}" for r, p in enumerate(self.pass_at_1))
        return (f"self-repair pass@1 {rounds}; best of {self.baseline_samples} by the visible checks "
                f"(temperature {self.baseline_temperature:g}) {self.baseline_pass_at_1:.3f}; {self.repaired} "
                f"repaired, {self.broken} broken, {self.without_checks} problems state no checkable example")
