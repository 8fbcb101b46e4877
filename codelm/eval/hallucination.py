"""Code hallucinations (after Liu et al. 2024's taxonomy): names, imports, module attributes and call arities that
a program uses but that do not exist, found before it runs; and runtime errors sorted into the same kinds.

The static half reads the program's AST (pyflakes for names never defined) and writes a probe: a small program
that, in the sandbox (the programs' own interpreter and packages, no network, limits), imports each module the
program imports and reports which do not resolve, which attributes the program takes from them do not exist
(`json.loads_file`) and which calls cannot bind to the function's signature (`math.sqrt(1, 2)`). Importing
runs a module's code, which is why it happens in the sandbox and not in this process.

Flags are what the program states, not what it would do: a flagged program may never reach the bad line, and an
unflagged one may still fail on a name the analysis cannot see (attributes of objects, dynamic imports).
"""

import ast
import json
import re
from collections import Counter
from dataclasses import dataclass

from pyflakes import checker as flakes

from codelm.eval.rejection import auroc

STATIC_KINDS = ("name", "import", "attribute", "arity")
RUNTIME_KINDS = {"NameError": "name", "UnboundLocalError": "name", "ImportError": "import",
                 "ModuleNotFoundError": "import", "AttributeError": "attribute"}
ARITY = re.compile(r"takes .* positional argument|missing \d+ required|unexpected keyword argument|"
                   r"got multiple values for argument|takes no (keyword )?arguments")

PROBE = '''import importlib, importlib.util, inspect, json
found = []
for module, attributes, calls in json.loads({checks!r}):
    try:
        imported = importlib.import_module(module) if importlib.util.find_spec(module) else None
    except Exception:
        imported = None
    if imported is None:
        found.append(["import", module])
        continue
    for name in attributes:
        if not hasattr(imported, name):
            found.append(["attribute", module + "." + name])
    for name, count, keywords in calls:
        try:
            inspect.signature(getattr(imported, name)).bind(*range(count), **dict.fromkeys(keywords))
        except TypeError:
            found.append(["arity", module + "." + name + "/" + str(count) + "+" + ",".join(keywords)])
        except Exception:
            pass
print({marker!r} + json.dumps(found))
'''
MARKER = "codelm-probe:"


class Uses(ast.NodeVisitor):
    """What a program takes from the modules it imports: per module, attributes and calls (positional count,
    keyword names); calls with *args or **kwargs are left out (their arity is not known)."""

    def __init__(self):
        self.modules: dict[str, str] = {}  # name bound in the program -> module
        self.imported: dict[str, str] = {}  # name bound by `from module import name` -> module
        self.uses: dict[str, tuple[set[str], set[tuple]]] = {}

    def use(self, module: str) -> tuple[set[str], set[tuple]]:
        return self.uses.setdefault(module, (set(), set()))

    def visit_Import(self, node: ast.Import):
        for alias in node.names:
            self.use(alias.name)
            if alias.asname:
                self.modules[alias.asname] = alias.name
            else:
                self.modules[alias.name.split(".")[0]] = alias.name.split(".")[0]
                self.use(alias.name.split(".")[0])

    def visit_ImportFrom(self, node: ast.ImportFrom):
        if node.level or not node.module:
            return  # a relative import: the program's own package, not an API
        for alias in node.names:
            if alias.name != "*":
                self.use(node.module)[0].add(alias.name)
                self.imported[alias.asname or alias.name] = node.module

    def visit_Attribute(self, node: ast.Attribute):
        if isinstance(node.value, ast.Name) and node.value.id in self.modules:
            self.use(self.modules[node.value.id])[0].add(node.attr)
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call):
        starred = any(isinstance(a, ast.Starred) for a in node.args) or any(k.arg is None for k in node.keywords)
        target = None
        if isinstance(node.func, ast.Attribute) and isinstance(node.func.value, ast.Name):
            module = self.modules.get(node.func.value.id)
            target = (module, node.func.attr) if module else None
        elif isinstance(node.func, ast.Name) and node.func.id in self.imported:
            target = (self.imported[node.func.id], node.func.id)
        if target and not starred:
            self.use(target[0])[1].add((target[1], len(node.args), tuple(sorted(k.arg for k in node.keywords))))
        self.generic_visit(node)


def undefined_names(tree: ast.Module) -> list[str]:
    """Names used but never defined (pyflakes), the builtins known."""
    report = flakes.Checker(tree, filename="program.py")
    return sorted({m.message_args[0] for m in report.messages if isinstance(m, flakes.messages.UndefinedName)})


def probe(program: str) -> tuple[list[list[str]], str | None]:
    """(the flags found without running anything, the probe program to run in the sandbox or None). A program
    that does not parse has no flags: it is a syntax error, not a hallucination."""
    try:
        tree = ast.parse(program)
    except (SyntaxError, ValueError):
        return [], None
    flags = [["name", name] for name in undefined_names(tree)]
    uses = Uses()
    uses.visit(tree)
    checks = [[module, sorted(attributes), sorted(calls)] for module, (attributes, calls) in sorted(uses.uses.items())]
    return flags, PROBE.format(checks=json.dumps(checks), marker=MARKER) if checks else None


def probe_flags(stdout: str) -> list[list[str]]:
    """The flags a probe printed; none when it did not get to print them."""
    line = next((line for line in stdout.splitlines() if line.startswith(MARKER)), None)
    return json.loads(line[len(MARKER):]) if line else []


def runtime_kind(status: str, detail: str) -> str | None:
    """What a failed run's error says: a name, import, attribute or arity error (hallucination-like), "syntax",
    "timeout", or "logic" (a wrong answer, any other exception); None for a passing run."""
    if status == "passed":
        return None
    if status in ("timeout", "killed"):
        return "timeout"
    last = detail.strip().splitlines()[-1] if detail.strip() else ""
    exception = re.match(r"(\w+(?:\.\w+)*)(?::|$)", last)
    name = exception.group(1).rsplit(".", 1)[-1] if exception else ""
    if name in ("SyntaxError", "IndentationError", "TabError"):
        return "syntax"
    if name == "TypeError" and ARITY.search(last):
        return "arity"
    return RUNTIME_KINDS.get(name, "logic")


@dataclass
class HallucinationReport:
    """How many generated programs state names or APIs that do not exist, and how that goes with failing."""

    samples: int  # generated programs (prompts that did not fit are left out)
    flagged: float  # share with a static flag
    static: dict[str, int]  # programs with a flag of each kind
    failures: int
    failures_flagged: float  # share of failures with a static flag
    failures_runtime: dict[str, int]  # failures by what their error says (runtime_kind)
    failures_hallucinated: float  # share of failures whose error is a name, import, attribute or arity error
    auroc: float | None  # the static flag as a predictor of failure, over every sample
    auroc_greedy: float | None = None  # with --uncertainty: over the greedy answers, as semantic entropy's is

    def summary(self) -> str:
        auroc = "n/a" if self.auroc is None else f"{self.auroc:.3f}"
        greedy = "" if self.auroc_greedy is None else f" (greedy answers: {self.auroc_greedy:.3f})"
        return (f"hallucination flags on {100 * self.flagged:.0f}% of {self.samples} programs {self.static}; "
                f"{100 * self.failures_hallucinated:.0f}% of {self.failures} failures are name/import/attribute/"
                f"arity errors, {100 * self.failures_flagged:.0f}% were flagged; flag AUROC for failure {auroc}"
                f"{greedy}")


def report(rows: list[dict], greedy_rows: list[dict] | None = None) -> HallucinationReport:
    """From samples.jsonl rows carrying `hallucinations` (static flags), `failure` and `status`."""
    rows = [r for r in rows if r["status"] != "skipped"]
    failed = [r for r in rows if r["status"] != "passed"]
    greedy = [r for r in greedy_rows or [] if r["status"] != "skipped"]
    return HallucinationReport(
        samples=len(rows), flagged=share([r for r in rows if r["hallucinations"]], rows),
        static={k: sum(any(f[0] == k for f in r["hallucinations"]) for r in rows) for k in STATIC_KINDS},
        failures=len(failed), failures_flagged=share([r for r in failed if r["hallucinations"]], failed),
        failures_runtime=dict(Counter(r["failure"] for r in failed)),
        failures_hallucinated=share([r for r in failed if r["failure"] in STATIC_KINDS], failed),
        auroc=flag_auroc(rows), auroc_greedy=flag_auroc(greedy) if greedy_rows is not None else None)


def share(part: list, whole: list) -> float:
    return len(part) / len(whole) if whole else 0.0


def flag_auroc(rows: list[dict]) -> float | None:
    """AUROC of "has a static flag" for "failed" (None when all passed or all failed)."""
    return auroc([float(bool(r["hallucinations"])) for r in rows], [r["status"] != "passed" for r in rows])
