"""MBPP (Austin et al. 2021, "Program Synthesis with Large Language Models") from google-research's published files.

Two files, read from a path the user gives (nothing is downloaded):
- mbpp.jsonl, the full set (974 problems): one JSON object per line with
  task_id, text (the request), code (the reference), test_list (three asserts),
  test_setup_code and challenge_test_list (not scored here, as in the paper);
- sanitized-mbpp.json, the hand-verified subset (427): one JSON array of
  objects with source_file, task_id, prompt (the request), code, test_imports
  and test_list.

Each problem becomes a HumanEval-shaped task so the same prompts, reply
extraction and sandbox score it. MBPP states a request and tests, not a
signature, so the prompt is the reference's own signature with the request and
the first assert as its docstring (the first assert is what EvalPlus's MBPP+
prompt shows too); the completion continues it. The canonical solution is the
whole reference after that stub (constants and helpers included; the later
definition wins), and the test is every assert of test_list after
test_imports, the reference's own imports (asserts such as `math.isclose`
rely on them) and test_setup_code.
"""

import ast
from pathlib import Path

from codelm.errors import UserError
from codelm.tasks.rows import read_rows


def load(path: str | Path) -> list[dict]:
    """Every problem of an MBPP file as a task, in file order."""
    return [task_from_row(row, f"{path} task {row.get('task_id')}") for row in read_rows(path, "MBPP")]


def task_from_row(row: dict, where: str) -> dict:
    """One MBPP problem (either file's shape) as a HumanEval-shaped task."""
    request = row.get("text", row.get("prompt"))
    if not isinstance(request, str) or not isinstance(row.get("code"), str) or not row.get("test_list"):
        raise UserError(f"{where}: an MBPP problem needs text (or prompt), code and test_list")
    code = row["code"].replace("\r\n", "\n")
    tests = [t.replace("\r\n", "\n") for t in row["test_list"]]
    entry = entry_point(code, tests, where)
    setup = [*row.get("test_imports", []), *imports(code), row.get("test_setup_code", "")]
    body = "".join(f"    {line}\n" for test in tests for line in test.splitlines())
    return {"task_id": f"Mbpp/{row['task_id']}", "prompt": signature_prompt(code, entry, request, tests[0]),
            "canonical_solution": "\n" + code.rstrip() + "\n", "entry_point": entry,
            "test": "\n".join(s for s in setup if s.strip()) + f"\n\ndef check(candidate):\n{body}"}


def entry_point(code: str, tests: list[str], where: str) -> str:
    """The function the asserts call that the reference defines (MBPP does not name it)."""
    try:
        defined = [n.name for n in ast.parse(code).body if isinstance(n, ast.FunctionDef)]
        calls = [n.func.id for t in tests for n in ast.walk(ast.parse(t))
                 if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)]
    except SyntaxError as e:
        raise UserError(f"{where}: its code or tests do not parse: {e}") from None
    found = next((name for name in calls if name in defined), None)
    if found is None:
        raise UserError(f"{where}: its asserts call none of the functions its code defines ({defined})")
    return found


def imports(code: str) -> list[str]:
    """The reference's top-level imports: the asserts may use them (`math.isclose`) where a candidate does not."""
    return [ast.unparse(n) for n in ast.parse(code).body if isinstance(n, (ast.Import, ast.ImportFrom))]


def signature_prompt(code: str, entry: str, request: str, example: str = "") -> str:
    """`def entry(params):` from the reference, with the request (and an example assert) as its docstring."""
    node = next(n for n in ast.parse(code).body if isinstance(n, ast.FunctionDef) and n.name == entry)
    doc = "\n".join(line.strip() for line in f"{request.strip()}\n{example.strip()}".strip().splitlines())
    doc = doc.replace("\\", "\\\\").replace('"""', '\\"\\"\\"')
    indented = "".join(f"    {line}\n" if line else "\n" for line in doc.splitlines())
    return f"def {entry}({ast.unparse(node.args)}):\n    \"\"\"\n{indented}    \"\"\"\n"
