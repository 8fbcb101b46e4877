"""Bug-fix tasks made offline from any Python code base with tests (SWE-smith style): inject a bug by an AST
mutation, keep it when it breaks some tests that passed and leaves others passing, and write the task.

A mutation edits the source text at one AST node's position, so the patch is a one-line change: a comparison or
arithmetic operator flipped (`<` and `<=`, `+` and `-`), an off-by-one in a `range` bound or a slice's end,
the two arguments of a call swapped, a statement removed (replaced by `pass`), an integer constant off by one.
Test files (test_*.py, *_test.py, files under tests/ or test/) are never mutated.

A task is kept when the mutant's test run breaks at least one test that passed before (FAIL_TO_PASS) and at
least one test that passed before still passes (PASS_TO_PASS). Its issue text is written from the failing
tests' output (the assertion or exception the run printed), never from the patch. It is resolved when every
FAIL_TO_PASS test passes and no PASS_TO_PASS test breaks.

Per-test outcomes are read from the test command's output: `python -m unittest -v` ("test (module.Class.test)
... ok") or `python -m pytest -rA` ("PASSED path::test").
"""

import ast
import difflib
import random
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from codelm.config import knob
from codelm.errors import UserError

UNITTEST = re.compile(r"^(\w+) \(([\w.]+)\)(?:\n.*)?? \.\.\. (ok|FAIL|ERROR)", re.M)
PYTEST = re.compile(r"^(PASSED|FAILED|ERROR) (\S+)", re.M)
COMPARE = {ast.Lt: ("<", "<="), ast.LtE: ("<=", "<"), ast.Gt: (">", ">="), ast.GtE: (">=", ">"),
           ast.Eq: ("==", "!="), ast.NotEq: ("!=", "==")}
ARITHMETIC = {ast.Add: ("+", "-"), ast.Sub: ("-", "+")}


@dataclass
class BugfixConfig:
    """`codelm tasks bugfix`: which repository, how its tests run, how many tasks."""

    repo: str = knob("", "the repository (a directory of Python code with tests); never modified")
    test_cmd: str = knob("", "the command that runs its tests, printing per-test results (`python -m unittest "
                         "-v`, `python -m pytest -rA`), run from the repository's root")
    out: str = knob("", "the tasks, one JSON object per line")
    max_tasks: int = knob(20, "stop after this many tasks")
    max_tries: int = knob(200, "mutants tried at most (each is one run of the tests)")
    seed: int = knob(0, "the order mutants are tried in")
    timeout: float = knob(120.0, "seconds one test run may take; a mutant that runs past it is not kept")

    def check(self):
        if not (self.repo and self.test_cmd and self.out):
            raise UserError("--repo, --test-cmd and --out are required")
        if self.max_tasks < 1 or self.max_tries < 1 or self.timeout <= 0:
            raise UserError("--max-tasks and --max-tries must be >= 1 and --timeout > 0")


@dataclass
class Mutation:
    path: str  # relative to the repository
    kind: str  # compare | arithmetic | off_by_one | swap_args | remove_statement | constant
    line: int
    start: int  # character offsets in the file's text
    end: int
    replacement: str

    def apply(self, text: str) -> str:
        return text[:self.start] + self.replacement + text[self.end:]


@dataclass
class BugfixTask:
    instance_id: str
    repo: str  # the repository the task was made from
    test_cmd: str
    patch: str  # applying it to the repository injects the bug; the fix is its reverse
    problem_statement: str  # written from the failing tests' output, never from the patch
    FAIL_TO_PASS: list[str] = field(default_factory=list)
    PASS_TO_PASS: list[str] = field(default_factory=list)
    mutation: str = ""  # the mutation's kind, for analysis only (an agent is not shown it)

    def to_json(self) -> dict:
        return asdict(self)


def is_test_file(path: Path) -> bool:
    return (path.name.startswith("test_") or path.stem.endswith("_test") or path.name == "conftest.py"
            or any(part in ("tests", "test") for part in path.parts[:-1]))


def source_files(repo: Path) -> list[Path]:
    return sorted(p for p in repo.rglob("*.py") if not is_test_file(p.relative_to(repo))
                  and not any(part.startswith(".") for part in p.relative_to(repo).parts))


class Sites(ast.NodeVisitor):
    """Every mutation one file's text allows."""

    def __init__(self, path: str, text: str):
        self.path, self.text = path, text
        self.starts = [0]
        for line in text.splitlines(keepends=True):
            self.starts.append(self.starts[-1] + len(line))
        self.lines = text.splitlines(keepends=True)
        self.found: list[Mutation] = []

    def offset(self, line: int, col: int) -> int:
        """A character offset from an AST (line, UTF-8 byte column)."""
        return self.starts[line - 1] + len(self.lines[line - 1].encode()[:col].decode(errors="ignore"))

    def span(self, node: ast.AST) -> tuple[int, int]:
        return self.offset(node.lineno, node.col_offset), self.offset(node.end_lineno, node.end_col_offset)

    def add(self, kind: str, node: ast.AST, start: int, end: int, replacement: str):
        if self.text[start:end] != replacement:
            self.found.append(Mutation(self.path, kind, node.lineno, start, end, replacement))

    def operator(self, kind: str, node: ast.AST, left: ast.AST, right: ast.AST, old: str, new: str):
        """Replace the operator written between two operands."""
        start, end = self.span(left)[1], self.span(right)[0]
        between = self.text[start:end]
        at = between.find(old)
        if at >= 0 and between.count(old) == 1:
            self.add(kind, node, start + at, start + at + len(old), new)

    def visit_Compare(self, node: ast.Compare):
        if len(node.ops) == 1 and type(node.ops[0]) in COMPARE:
            self.operator("compare", node, node.left, node.comparators[0], *COMPARE[type(node.ops[0])])
        self.generic_visit(node)

    def visit_BinOp(self, node: ast.BinOp):
        if type(node.op) in ARITHMETIC and not isinstance(node.left, ast.Constant | ast.JoinedStr):
            self.operator("arithmetic", node, node.left, node.right, *ARITHMETIC[type(node.op)])
        self.generic_visit(node)

    def off_by_one(self, node: ast.AST, bound: ast.AST):
        start, end = self.span(bound)
        text = self.text[start:end]
        simple = isinstance(bound, ast.Name | ast.Constant | ast.Attribute | ast.Call | ast.Subscript)
        self.add("off_by_one", node, start, end, f"{text} - 1" if simple else f"({text}) - 1")

    def visit_Call(self, node: ast.Call):
        if isinstance(node.func, ast.Name) and node.func.id == "range" and node.args and not node.keywords:
            self.off_by_one(node, node.args[min(len(node.args), 2) - 1])
        plain = not node.keywords and not any(isinstance(a, ast.Starred) for a in node.args)
        if plain and len(node.args) == 2 and node.lineno == node.end_lineno:
            (a0, a1), (b0, b1) = self.span(node.args[0]), self.span(node.args[1])
            first, second = self.text[a0:a1], self.text[b0:b1]
            if first != second:
                self.add("swap_args", node, a0, b1, second + self.text[a1:b0] + first)
        self.generic_visit(node)

    def visit_Slice(self, node: ast.Slice):
        if node.upper is not None and not isinstance(node.upper, ast.UnaryOp):
            self.off_by_one(node, node.upper)
        self.generic_visit(node)

    def visit_Constant(self, node: ast.Constant):
        if type(node.value) is int and hasattr(node, "end_col_offset"):
            start, end = self.span(node)
            self.add("constant", node, start, end, str(node.value + 1))

    def visit_FunctionDef(self, node: ast.FunctionDef):
        body = [s for s in node.body if not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant))]
        if len(body) >= 2:
            for statement in body[:-1]:
                if isinstance(statement, ast.Assign | ast.AugAssign | ast.Expr) and \
                        statement.lineno == statement.end_lineno:
                    start, end = self.span(statement)
                    self.add("remove_statement", statement, start, end, "pass")
        self.generic_visit(node)

    visit_AsyncFunctionDef = visit_FunctionDef


def mutations(repo: Path) -> list[Mutation]:
    """Every mutation site of the repository's non-test Python files (files that do not parse are skipped)."""
    found = []
    for path in source_files(repo):
        text = path.read_text(encoding="utf-8", errors="replace")
        try:
            tree = ast.parse(text)
        except (SyntaxError, ValueError):
            continue
        sites = Sites(str(path.relative_to(repo)), text)
        sites.visit(tree)
        found += sites.found
    return found


def diff(path: str, before: str, after: str) -> str:
    return "".join(difflib.unified_diff(before.splitlines(keepends=True), after.splitlines(keepends=True),
                                        f"a/{path}", f"b/{path}", n=3))


def apply_patch(root: Path, patch: str, reverse: bool = False):
    """Apply a one-file unified diff made by `diff` (or its reverse) under root; UserError when it does not fit."""
    lines = patch.splitlines(keepends=True)
    path = root / lines[0][len("--- a/"):].strip()
    text = path.read_text(encoding="utf-8").splitlines(keepends=True)
    out, at = [], 0
    for hunk in re.split(r"(?m)^(?=@@ )", "".join(lines[2:])):
        if not hunk.startswith("@@"):
            continue
        head, *body = hunk.splitlines(keepends=True)
        start = int(re.match(r"@@ -(\d+)(?:,\d+)? \+(\d+)", head).group(2 if reverse else 1)) - 1
        old = [b[1:] for b in body if b[0] in (" ", "+" if reverse else "-")]
        new = [b[1:] for b in body if b[0] in (" ", "-" if reverse else "+")]
        if text[start:start + len(old)] != old:
            raise UserError(f"the patch does not apply to {path} at line {start + 1}")
        out += text[at:start] + new
        at = start + len(old)
    path.write_text("".join(out + text[at:]), encoding="utf-8")


def per_test_outcomes(output: str) -> dict[str, bool]:
    """Per-test pass/fail from unittest -v or pytest -rA output."""
    found = {(where if where.endswith("." + test) else f"{where}.{test}"): status == "ok"  # 3.11+ / older
             for test, where, status in UNITTEST.findall(output)}
    found.update({name: status == "PASSED" for status, name in PYTEST.findall(output)})
    return found


def run_tests(root: Path, test_cmd: str, timeout: float) -> tuple[dict[str, bool], str]:
    """Run the test command in root: (per-test outcomes, the output); a run past `timeout` fails every test."""
    try:
        proc = subprocess.run(test_cmd, shell=True, cwd=root, capture_output=True, text=True, timeout=timeout,
                              errors="replace")
    except subprocess.TimeoutExpired:
        return {}, f"the test command ran past {timeout:g} s"
    output = proc.stdout + proc.stderr
    return per_test_outcomes(output), output


def failure_text(output: str, tests: list[str], limit: int = 3) -> str:
    """What the run printed about these failing tests: unittest's FAIL/ERROR blocks, pytest's summary lines."""
    blocks = re.split(r"(?m)^={20,}\n", output)
    chosen = []
    for test in tests[:limit]:
        short = test.rsplit(".", 1)[-1].rsplit("::", 1)[-1]
        block = next((b for b in blocks if re.match(rf"(FAIL|ERROR): {re.escape(short)}\b", b)), None)
        if block is not None:
            head, _, trace = block.partition("\n")
            trace = re.split(r"(?m)^-{20,}$", trace.strip())[1 if trace.strip().startswith("-") else 0]
            tail = [line for line in trace.splitlines() if line.strip()]  # before the run's closing summary
            chosen.append(head + "\n" + "\n".join(tail[-6:]))
        else:
            chosen += [line for line in output.splitlines() if line.startswith(("FAILED", "ERROR")) and short in line]
    return "\n\n".join(chosen) if chosen else "\n".join(output.strip().splitlines()[-12:])


def problem_statement(output: str, failing: list[str]) -> str:
    listed = "\n".join(f"- {t}" for t in failing[:10])
    return (f"After a recent change these tests fail:\n{listed}\n\nWhat the test run printed:\n\n"
            f"{failure_text(output, failing)}\n\nFind the bug in the code (not in the tests) and fix it.")


def make_tasks(repo: Path, test_cmd: str, max_tasks: int = 20, max_tries: int = 200, seed: int = 0,
               timeout: float = 120.0, progress=None) -> Iterator[BugfixTask]:
    """Bug-fix tasks from `repo` (never modified: every run is in a temporary copy)."""
    repo = repo.resolve()
    if not repo.is_dir():
        raise UserError(f"--repo {repo}: not a directory")
    sites = mutations(repo)
    if not sites:
        raise UserError(f"--repo {repo}: no Python source outside its tests to mutate")
    with tempfile.TemporaryDirectory(prefix="codelm-bugfix-") as scratch:
        copy = Path(scratch) / repo.name
        shutil.copytree(repo, copy, ignore=shutil.ignore_patterns(".git", "__pycache__", "*.pyc"))
        before, output = run_tests(copy, test_cmd, timeout)
        if not before:
            raise UserError(f"--test-cmd {test_cmd!r}: no per-test results in its output (use `python -m unittest "
                            f"-v` or `python -m pytest -rA`); it printed:\n{output.strip()[-600:]}")
        passing = sorted(t for t, ok in before.items() if ok)
        if not passing:
            raise UserError(f"--test-cmd {test_cmd!r}: every test fails before any mutation ({len(before)} run)")
        random.Random(seed).shuffle(sites)
        made = 0
        for tried, mutation in enumerate(sites[:max_tries]):
            if made >= max_tasks:
                break
            path = copy / mutation.path
            original = path.read_text(encoding="utf-8")
            path.write_text(mutation.apply(original), encoding="utf-8")
            try:
                after, output = run_tests(copy, test_cmd, timeout)
            finally:
                path.write_text(original, encoding="utf-8")
            broken = [t for t in passing if not after.get(t, False)]
            kept = [t for t in passing if after.get(t, False)]
            if progress:
                progress(tried + 1, made + bool(broken and kept), mutation)
            if broken and kept:
                made += 1
                yield BugfixTask(f"{repo.name}-{made:04d}", str(repo), test_cmd,
                                 diff(mutation.path, original, mutation.apply(original)),
                                 problem_statement(output, broken), broken, kept, mutation.kind)
