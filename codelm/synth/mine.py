"""`codelm synth mine`: instruction data mined from code, one row per documented function, provenance on each.

Every top-level function, and every method of a top-level class, that has a
docstring is a candidate. Its row:

- instruction: the signature and the docstring's text phrased as a request by
  one of TEMPLATES, picked by a hash of the seed and the function's location
  (the same corpus and seed give the same file, byte for byte);
- response: the function in a ```python fence, after the module-level imports
  it uses, without its docstring: the request already carries the docstring
  word for word, so keeping it would spend the response's loss on copying the
  prompt (docstrings are often longer than the bodies, doctests included);
- tests: for a top-level function whose docstring has doctest examples, the
  examples run against the function in the sandbox (the original function is
  the oracle). A function failing its own doctests is dropped; each example
  that is an expression calling the function becomes `assert EXPR == VALUE`
  with the value the function returned, kept if it passes against the
  response's code alone. Methods keep no tests (they need an instance).

A candidate is dropped for the first filter it fails, and counted under that
reason: no_docstring, test_code, dunder, docstring_too_short, async_function,
too_long, no_return_value (no `return` with a value in its own body),
inline_docstring (shares a line with code, so it cannot be cut out),
does_not_parse, unsafe_module (imports or uses process, file, network or
interpreter modules), unsafe_builtin (open, eval, input, ...),
not_self_contained (reads a module-level name other than an import: a helper,
a constant, its own class; the response would call what the reader never
sees), exact_duplicate (same code after ast normalisation), near_duplicate
(the curation's MinHash settings), contaminated (the curation's HumanEval
decontamination), doctest_failed, doctest_error (the sandbox run did not end).
"""

import ast
import builtins
import doctest
import hashlib
import json
import symtable
import textwrap
import time
import warnings
from collections import Counter
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tqdm import tqdm

from codelm.errors import UserError
from codelm.sandbox.supervisor import Limits, Sandbox
from codelm.synth.common import (
    UNSAFE_BUILTINS,
    UNSAFE_MODULES,
    Counts,
    Novelty,
    source_files,
    write_rows,
)
from codelm.synth.config import MineConfig

MINER = "codelm.synth.mine/1"  # in every row's provenance; bump when the rows change
TEMPLATES = {
    "function/0": "Write a Python function `{signature}` that does the following:\n\n{doc}",
    "function/1": "Implement the Python function `{signature}`.\n\n{doc}",
    "function/2": "{doc}\n\nWrite this as a Python function with the signature `{signature}`.",
    "function/3": "I need a Python function `{signature}`. Here is what it should do:\n\n{doc}",
    "method/0": "Write the method `{signature}` of the Python class `{cls}`. It does the following:\n\n{doc}",
    "method/1": "Implement the method `{cls}.{signature}` in Python.\n\n{doc}",
    "method/2": "{doc}\n\nWrite this as the method `{signature}` of a Python class `{cls}`.",
}
BUILTIN_NAMES = frozenset(name for name in dir(builtins) if not name.startswith("_")) | {"__debug__"}
ORACLE_LIMITS = Limits(cpu_seconds=5, wall_seconds=10, output_chars=200_000)
MAX_ASSERT_CHARS = 500  # longer recorded values make asserts nobody reads
BATCH = 256  # candidates whose doctests run in the sandbox together

# Runs after the row's code in the sandbox: the docstring's doctests against the function, then each candidate
# expression alone in a fresh copy of the code's namespace, its value recorded as an assert that is run too.
ORACLE = '''
_base = dict(globals())
import contextlib as _contextlib, doctest as _doctest, io as _io, json as _json
_name, _doc, _exprs = _json.loads({payload!r})
_test = _doctest.DocTestParser().get_doctest(_doc, dict(_base), _name, "<docstring>", 0)
_failed = _doctest.DocTestRunner(verbose=False).run(_test, out=lambda text: None).failed
_asserts = []
for _expr in _exprs if not _failed else []:
    try:
        with _contextlib.redirect_stdout(_io.StringIO()):
            _value = eval(_expr, dict(_base))
            if _value is None or eval(repr(_value), dict(_base)) != _value:
                continue
            _assert = "assert " + _expr + " == " + repr(_value)
            exec(_assert, dict(_base))
    except Exception:
        continue
    if len(_assert) <= {max_chars}:
        _asserts.append(_assert)
print("\\n" + _json.dumps({{"failed": _failed, "asserts": _asserts}}))
'''


@dataclass
class Candidate:
    """A function that passed the static filters, waiting for its doctests."""

    code: str  # the response: imports it uses, then the function without its docstring
    instruction: str
    entry_point: str
    docstring: str
    provenance: dict
    expressions: list[str]  # doctest examples that are expressions calling the function


@dataclass
class MineStats(Counts):
    files: int = 0
    functions: int = 0  # top-level functions and methods of top-level classes seen
    rows: int = 0
    rows_with_tests: int = 0
    asserts: int = 0
    seconds: float = 0.0
    dropped: Counter = field(default_factory=Counter)  # per filter, see the module docstring
    skipped: Counter = field(default_factory=Counter)  # files and shards not read, by reason
    templates: Counter = field(default_factory=Counter)

    def summary(self, out: str) -> str:
        return (f"synth mine: {self.rows} rows ({self.rows_with_tests} with {self.asserts} asserts) from "
                f"{self.functions} functions in {self.files} files, {self.seconds:.0f}s -> {out}; {self.reasons()}")


def mine(cfg: MineConfig) -> MineStats:
    """Mine cfg.corpus into cfg.out (JSONL rows) and its .stats.json; written only if some row survives."""
    corpus, out = Path(cfg.corpus), Path(cfg.out)
    if not corpus.exists():
        raise UserError(f"corpus path not found: {cfg.corpus}")
    start = time.perf_counter()
    stats = MineStats()
    miner = Miner(cfg, stats)
    rows: list[dict] = []
    pending: list[Candidate] = []
    with Sandbox(workers=cfg.workers, limits=ORACLE_LIMITS) if cfg.tests else nullcontext() as box:
        for text, meta in tqdm(source_files(corpus, stats.skipped), desc="synth mine", unit=" files"):
            stats.files += 1
            pending += miner.candidates(text, meta)
            if len(pending) >= BATCH or cfg.limit and len(rows) + len(pending) >= cfg.limit:
                rows += miner.check(pending, box)
                pending = []
                if cfg.limit and len(rows) >= cfg.limit:
                    break
        rows += miner.check(pending, box)
    rows = rows[:cfg.limit] if cfg.limit else rows
    if not rows:
        raise UserError(f"no rows mined from {cfg.corpus} ({stats.files} files, {stats.functions} functions; "
                        f"{stats.reasons()})")
    stats.rows = len(rows)
    stats.rows_with_tests = sum(1 for row in rows if row["tests"])
    stats.asserts = sum(len(row["tests"]) for row in rows)
    stats.templates = Counter(row["provenance"]["template"] for row in rows)
    stats.seconds = time.perf_counter() - start
    write_rows(out, rows, {**stats.to_dict(), "config": asdict(cfg), "miner": MINER})
    return stats


def module_imports(tree: ast.Module) -> dict[str, tuple[str, str]]:
    """name -> (the import statement binding just that name, its top-level module) for the module's imports,
    those inside module-level `try`/`if`/`with` blocks included (`try: import _locale except ImportError`)."""
    bound, stack = {}, list(reversed(tree.body))
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.If, ast.Try, ast.TryStar, ast.With)):
            handlers = [s for h in getattr(node, "handlers", []) for s in h.body]
            blocks = [node.body, handlers, getattr(node, "orelse", []), getattr(node, "finalbody", [])]
            stack += reversed([s for block in blocks for s in block])
        elif isinstance(node, ast.Import):
            for alias in node.names:
                bound[alias.asname or alias.name.split(".")[0]] = (ast.unparse(ast.Import([alias])),
                                                                   alias.name.split(".")[0])
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module != "__future__":
            for alias in node.names:
                if alias.name != "*":
                    bound[alias.asname or alias.name] = (ast.unparse(ast.ImportFrom(node.module, [alias], 0)),
                                                         node.module.split(".")[0])
    return bound


def global_names(code: str) -> set[str]:
    """Names the code reads or writes in module scope (builtins included), but those it defines itself."""
    top = symtable.symtable(code, "<mined>", "exec")
    names, tables = set(), list(top.get_children())
    while tables:
        table = tables.pop()
        names |= {s.get_name() for s in table.get_symbols() if s.is_global() and (s.is_referenced() or s.is_assigned())}
        tables += table.get_children()
    names |= {s.get_name() for s in top.get_symbols() if s.is_referenced()}  # decorators, defaults, annotations
    return names - {s.get_name() for s in top.get_symbols() if s.is_assigned()}


def returns_value(fn: ast.FunctionDef) -> bool:
    """A `return` with a value other than None in the function's own body (nested definitions do not count)."""
    stack = list(fn.body)
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Return) and node.value is not None and not (
                isinstance(node.value, ast.Constant) and node.value.value is None):
            return True
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)):
            stack.extend(ast.iter_child_nodes(node))
    return False


def is_test_code(path: str, name: str, cls: str) -> bool:
    parts = path.split("/")
    return (name.startswith("test") or cls.startswith("Test") or parts[-1].startswith("test_")
            or parts[-1].endswith("_test.py") or any(p in ("test", "tests") or p.endswith("_test") for p in parts[:-1]))


def first_line(fn: ast.FunctionDef) -> int:
    """Where the definition starts: its first decorator, else its `def`."""
    return min([fn.lineno] + [d.lineno for d in fn.decorator_list])


def without_docstring(lines: list[str], fn: ast.FunctionDef) -> str | None:
    """The function's source with its docstring's lines cut out, dedented; None if the docstring shares a line
    with code. (ast columns count UTF-8 bytes.)"""
    doc = fn.body[0]
    before = lines[doc.lineno - 1].encode()[:doc.col_offset]
    after = lines[doc.end_lineno - 1].encode()[doc.end_col_offset:]
    if before.strip() or after.strip() and not after.strip().startswith(b"#"):
        return None
    kept = lines[first_line(fn) - 1:doc.lineno - 1] + lines[doc.end_lineno:fn.end_lineno]
    return textwrap.dedent("".join(kept)).rstrip() + "\n"


def doctest_expressions(docstring: str, name: str) -> list[str] | None:
    """Sources of the docstring's doctest examples that are expressions using `name` (None: no examples)."""
    try:
        examples = doctest.DocTestParser().get_examples(docstring)
    except ValueError:  # malformed doctest: the sandbox run reports it as a failure
        return []
    if not examples:
        return None
    found = []
    for example in examples:
        try:
            expr = ast.parse(example.source, mode="eval")
        except SyntaxError:
            continue
        if not example.options.get(doctest.SKIP) and any(
                isinstance(n, ast.Name) and n.id == name for n in ast.walk(expr)):
            found.append(example.source.strip())
    return found


def template_for(seed: int, kind: str, key: str) -> str:
    ids = sorted(t for t in TEMPLATES if t.startswith(kind + "/"))
    return ids[int.from_bytes(hashlib.sha256(f"{seed}:{key}".encode()).digest()[:8], "big") % len(ids)]


class Miner:
    """The filters, in order, and the state they share across files (dedup, the HumanEval index)."""

    def __init__(self, cfg: MineConfig, stats: MineStats):
        self.cfg, self.stats = cfg, stats
        self.novelty = Novelty()

    def candidates(self, text: str, meta: dict) -> list[Candidate]:
        try:
            with warnings.catch_warnings():  # invalid escapes and the like in old code: not ours to report
                warnings.simplefilter("ignore")
                tree = ast.parse(text)
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            self.stats.skipped["syntax_error"] += 1
            return []
        imports, lines = module_imports(tree), text.splitlines(keepends=True)
        found = []
        for node in tree.body:
            members = [(node, "")] if not isinstance(node, ast.ClassDef) else [(m, node.name) for m in node.body]
            for fn, cls in members:
                if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    self.stats.functions += 1
                    result = self.examine(fn, cls, lines, imports, meta)
                    if isinstance(result, str):
                        self.stats.dropped[result] += 1
                    else:
                        found.append(result)
        return found

    def examine(self, fn: ast.FunctionDef, cls: str, lines: list[str], imports: dict, meta: dict) -> Candidate | str:
        """The candidate, or the reason it is dropped (the static filters, cheapest first)."""
        cfg, name, path = self.cfg, fn.name, meta.get("path", "")
        docstring = ast.get_docstring(fn)
        if not docstring:
            return "no_docstring"
        if is_test_code(path, name, cls):
            return "test_code"
        if name.startswith("__"):
            return "dunder"
        if len(docstring.split()) < cfg.min_docstring_words:
            return "docstring_too_short"
        if isinstance(fn, ast.AsyncFunctionDef):
            return "async_function"
        first = first_line(fn)
        source = "".join(lines[first - 1:fn.end_lineno])
        if fn.end_lineno - first + 1 > cfg.max_lines or len(source) > cfg.max_chars:
            return "too_long"
        if not returns_value(fn):
            return "no_return_value"
        body = without_docstring(lines, fn)
        if body is None:
            return "inline_docstring"
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                compile(body, "<mined>", "exec")
            names = global_names(body)
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            return "does_not_parse"
        inner = {a.name.split(".")[0] for n in ast.walk(fn) if isinstance(n, ast.Import) for a in n.names}
        inner |= {"" if n.level else n.module.split(".")[0] for n in ast.walk(fn) if isinstance(n, ast.ImportFrom)}
        used = {imports[n][1] for n in names if n in imports}
        if (inner | used) & UNSAFE_MODULES:
            return "unsafe_module"
        if names & UNSAFE_BUILTINS:
            return "unsafe_builtin"
        if any(n not in imports and n not in BUILTIN_NAMES for n in names) or "" in inner:
            return "not_self_contained"  # "" in inner: a relative import
        statements = {imports[n][0] for n in names if n in imports}
        header = "\n".join(sorted(statements, key=lambda s: (s.startswith("from"), s)))  # `import` lines first
        code = f"{header}\n\n\n{body}" if header else body
        return self.novelty.reason(ast.unparse(ast.parse(code)), code, source) or self.candidate(
            fn, cls, code, docstring, meta)

    def candidate(self, fn: ast.FunctionDef, cls: str, code: str, docstring: str, meta: dict) -> Candidate:
        kind = "method" if cls else "function"
        qualname = f"{cls}.{fn.name}" if cls else fn.name
        signature = f"{fn.name}({ast.unparse(fn.args)})" + (f" -> {ast.unparse(fn.returns)}" if fn.returns else "")
        template = template_for(self.cfg.seed, kind, f"{meta.get('repo', '')}/{meta.get('path', '')}:{qualname}")
        provenance = {"repo": meta.get("repo", ""), "path": meta.get("path", ""), "line": fn.lineno,
                      "function": qualname, "kind": kind, "license": meta.get("license", ""),
                      "source": meta.get("source", ""), "miner": MINER, "template": template}
        expressions = doctest_expressions(docstring, fn.name) if self.cfg.tests and not cls else None
        return Candidate(code, TEMPLATES[template].format(signature=signature, cls=cls, doc=docstring), fn.name,
                         docstring, provenance, expressions)

    def check(self, candidates: list[Candidate], box: Sandbox | None) -> list[dict]:
        """Rows of the candidates that pass their doctests (run together in the sandbox), in order."""
        tested = [c for c in candidates if c.expressions is not None]
        jobs = [(c.code, ORACLE.format(payload=json.dumps([c.entry_point, c.docstring, c.expressions]),
                                       max_chars=MAX_ASSERT_CHARS)) for c in tested]
        verdicts = dict(zip(map(id, tested), box.run_many(jobs) if jobs else []))
        rows = []
        for c in candidates:
            asserts = []
            if id(c) in verdicts:
                result = verdicts[id(c)]
                report = oracle_report(result.stdout) if result.status == "passed" else None
                if report is None:
                    self.stats.dropped["doctest_error"] += 1
                    continue
                if report["failed"]:
                    self.stats.dropped["doctest_failed"] += 1
                    continue
                asserts = report["asserts"]
            rows.append({"messages": [{"role": "user", "content": c.instruction},
                                      {"role": "assistant", "content": f"```python\n{c.code}```"}],
                         "entry_point": c.entry_point, "tests": asserts, "provenance": c.provenance})
        return rows


def oracle_report(stdout: str) -> dict | None:
    """The oracle's last line, or None when the run did not get there (output cut, a crash)."""
    try:
        report = json.loads(stdout.rstrip().rsplit("\n", 1)[-1])
    except ValueError:
        return None
    return report if isinstance(report, dict) and {"failed", "asserts"} <= report.keys() else None
