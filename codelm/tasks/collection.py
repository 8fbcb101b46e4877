"""Tasks with tests, from any source, in one shape: what RL rewards, DPO pairs and the evaluator execute.

A task is a HumanEval-shaped dict: task_id, prompt (code the model continues;
may be empty), canonical_solution (prompt + it is a program that passes),
test (defines `check(candidate)`), entry_point, and optionally instruction (the
chat request; without it chat mode wraps the prompt as HumanEval does). So
humaneval.base_prompt / chat_messages / chat_completion / job score every task
the same way, through the sandbox.

Sources: `procedural[:COUNT[:DIFFICULTY[:SEED]]]` (procedural.py, offline), or
a JSONL file of HumanEval-shaped rows or of `codelm synth` rows (messages,
entry_point and assert statements as tests; rows without tests are skipped and
counted: nothing checks them). Every task's reference solution must pass its
own tests in the sandbox before it is used (`validate`): a task whose tests
reject their own solution would reward nothing, or punish the right answer.
"""

import hashlib
from pathlib import Path

from codelm.errors import UserError
from codelm.io import jsonl_rows
from codelm.sandbox.supervisor import Result, run_many
from codelm.tasks import humaneval, procedural

REQUIRED = ("prompt", "canonical_solution", "test", "entry_point")
SYNTAX_ERRORS = ("SyntaxError", "IndentationError", "TabError")
OUTCOMES = ("passed", "failed", "syntax_error", "error", "timeout", "killed")


def from_synth_row(row: dict, task_id: str) -> dict | None:
    """A `codelm synth` row (user request, fenced reply, asserts) as a chat-only task, or None without tests."""
    if not row.get("tests"):
        return None
    request = next(m["content"] for m in row["messages"] if m["role"] == "user")
    reply = next(m["content"] for m in reversed(row["messages"]) if m["role"] == "assistant")
    code = humaneval.extract_code(reply, row["entry_point"])
    checks = "".join(f"    {line}\n" for test in row["tests"] for line in test.splitlines())
    return {"task_id": task_id, "prompt": "", "canonical_solution": code, "instruction": request,
            "test": f"def check(candidate):\n{checks}", "entry_point": row["entry_point"]}


def read_tasks(path: str | Path) -> tuple[list[dict], int]:
    """(tasks, rows skipped for having no tests) from a JSONL file; a malformed row is an error naming it."""
    tasks, untested = [], 0
    for where, row in jsonl_rows(path, "task file"):
        if "messages" in row and "entry_point" in row:
            found = from_synth_row(row, str(row.get("task_id") or where))
            untested += found is None
            tasks += [found] if found else []
            continue
        missing = [key for key in REQUIRED if not isinstance(row.get(key), str)]
        if missing:
            raise UserError(f"{where}: a task needs {', '.join(REQUIRED)} (HumanEval's shape) or a codelm synth "
                            f"row; missing {', '.join(missing)}")
        tasks.append({**row, "task_id": str(row.get("task_id") or where)})
    return tasks, untested


def load(source: str) -> tuple[list[dict], int]:
    """Tasks from `procedural[:COUNT[:DIFFICULTY[:SEED]]]` or a JSONL path; (tasks, untested rows skipped)."""
    if source == "procedural" or source.startswith("procedural:"):
        fields = source.split(":")[1:]
        try:
            count, difficulty, seed = [int(f) for f in fields] + [500, 1, 0][len(fields):]
            return procedural.generate(count, seed, difficulty), 0
        except ValueError as e:
            raise UserError(f"tasks {source!r}: expected procedural:COUNT:DIFFICULTY:SEED with integers "
                            f"(difficulty 1 to {procedural.MAX_DIFFICULTY}): {e}") from None
    return read_tasks(source)


def program(task: dict, completion: str) -> tuple[str, str]:
    """(program, tests) for a completion: HumanEval's rule for every task."""
    return humaneval.job(task, completion)


def messages(task: dict) -> list[dict]:
    """The chat a task is asked as: its own instruction, or its prompt inside HumanEval's instruction."""
    if task.get("instruction"):
        return [{"role": "user", "content": task["instruction"]}]
    return humaneval.chat_messages(task, [])


def validate(tasks: list[dict], workers: int = 0) -> None:
    """Every task's reference solution passes its tests in the sandbox, or an error names the first that does not."""
    results = run_many([program(t, t["canonical_solution"]) for t in tasks], humaneval.LIMITS, workers)
    for t, result in zip(tasks, results):
        if result.status != "passed":
            raise UserError(f"task {t['task_id']}: its tests do not pass against its own reference solution "
                            f"({outcome(result)}: {result.detail[:200]})")


def outcome(result: Result) -> str:
    """One of OUTCOMES: a syntax error is told apart from a program that ran and raised, and a timeout from both,
    so a reward audit can see why programs fail."""
    last_line = result.detail.strip().rpartition("\n")[2]  # a SyntaxError's report starts with its file and line
    if result.status == "error" and last_line.startswith(SYNTAX_ERRORS):
        return "syntax_error"
    return result.status


def is_held_out(task: dict, fraction: float) -> bool:
    """A stable split by a hash of the task id: the same task is on the same side on every run and machine."""
    digest = hashlib.sha256(task["task_id"].encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def split(tasks: list[dict], fraction: float) -> tuple[list[dict], list[dict]]:
    """(train, held out) by is_held_out."""
    held = [t for t in tasks if is_held_out(t, fraction)]
    return [t for t in tasks if not is_held_out(t, fraction)], held
