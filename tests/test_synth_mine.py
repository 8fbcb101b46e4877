"""`codelm synth mine`: each filter keeps and drops what it should, doctests become asserts through the sandbox,
HumanEval solutions are removed, rows carry provenance, the output is deterministic, real code gives sane rows."""

import ast
import json
import shutil
import textwrap
from pathlib import Path

import pytest

from codelm.cli import build_parser, main
from codelm.cli.options import resolve
from codelm.data.pipeline import curate, load_curate_config
from codelm.data.sources import stdlib_root
from codelm.errors import UserError
from codelm.sandbox.supervisor import run, run_many
from codelm.synth.config import MineConfig
from codelm.synth.mine import MINER, TEMPLATES, Miner, MineStats, mine, module_imports
from codelm.tasks.humaneval import load_problems

GOOD = '''
def clamp(value, low, high):
    """Limit value to the closed interval from low to high."""
    if value < low:
        return low
    return min(value, high)
'''
DOCTESTED = '''
def add(a: int, b: int) -> int:
    """Return the sum of two integers.

    >>> add(1, 2)
    3
    >>> [add(x, 1) for x in range(3)]
    [1, 2, 3]
    >>> total = add(2, 2)
    >>> total
    4
    """
    return a + b


def wrong(a, b):
    """Return the product of two numbers.

    >>> wrong(2, 3)
    7
    """
    return a * b
'''
NEAR = '''
def histogram(words, width=40, mark="#"):
    """Draw a bar per distinct word, scaled so the most frequent word gets the whole width."""
    counts = {}
    for word in words:
        counts[word] = counts.get(word, 0) + 1
    top = max(counts.values()) if counts else 1
    lines = []
    for word, count in sorted(counts.items(), key=lambda item: (-item[1], item[0])):
        bar = mark * max(1, round(width * count / top))
        lines.append(f"{word:>12} {bar} {count}")
    return "\\n".join(lines)
'''

# (module source, path, reason the last function is dropped for; None: kept)
CASES = [
    (GOOD, "util.py", None),
    (('import re\n\n\ndef squeeze(text):\n    """Collapse each run of whitespace into one space."""\n'
      '    return re.sub(r"\\s+", " ", text).strip()\n'), "text.py", None),
    ("def f(x):\n    return x + 1\n", "m.py", "no_docstring"),
    (GOOD.replace("def clamp", "def test_clamp"), "m.py", "test_code"),
    (GOOD, "pkg/tests/helpers.py", "test_code"),
    ("class A:\n" + textwrap.indent(GOOD.replace("clamp(", "__clamp__(self, "), "    "), "m.py", "dunder"),
    ('def f(x):\n    """Helper."""\n    return x\n', "m.py", "docstring_too_short"),
    (GOOD.replace("def clamp", "async def clamp"), "m.py", "async_function"),
    (GOOD.replace("    if value", "    pass\n" * 80 + "    if value"), "m.py", "too_long"),
    ('def f(x):\n    """Print x on its own line."""\n    print(x)\n    return None\n', "m.py", "no_return_value"),
    ('def f(x):\n    """Make an adder for x."""\n    def g(y):\n        return x + y\n', "m.py", "no_return_value"),
    ('def f(x):\n    """Return one more than x."""; return x + 1\n', "m.py", "inline_docstring"),
    ('class A:\n    def f(self):\n        """Return a block of text."""\n        return """\nx"""\n', "m.py",
     "does_not_parse"),
    ("import os\n" + GOOD.replace("return low", "return os.sep"), "m.py", "unsafe_module"),
    (GOOD.replace("    if value", "    import subprocess\n    if value"), "m.py", "unsafe_module"),
    ('def f(path):\n    """Read the text of the file at path."""\n    return open(path).read()\n', "m.py",
     "unsafe_builtin"),
    ("LIMIT = 3\n" + GOOD.replace("return low", "return LIMIT"), "m.py", "not_self_contained"),
    (GOOD.replace("    if value", "    from .util import x\n    if value"), "m.py", "not_self_contained"),
]


@pytest.fixture(scope="module")
def miner() -> Miner:
    """One miner for the filter cases (each case is distinct code, so dedup leaves them alone)."""
    return Miner(MineConfig(corpus="-", out="-", tests=False), MineStats())


def examine(miner: Miner, source: str, path: str = "m.py"):
    tree = ast.parse(source)
    node = tree.body[-1]
    fn, cls = (node.body[-1], node.name) if isinstance(node, ast.ClassDef) else (node, "")
    return miner.examine(fn, cls, source.splitlines(keepends=True), module_imports(tree), {"path": path})


@pytest.mark.parametrize("source,path,reason", CASES, ids=[f"{r or 'kept'}-{i}" for i, (_, _, r) in enumerate(CASES)])
def test_filters_keep_and_drop(miner, source, path, reason):
    result = examine(miner, source, path)
    assert (result if isinstance(result, str) else None) == reason, result


def test_the_response_is_the_function_with_its_imports_without_its_docstring(miner):
    source = "import re\nfrom typing import List\n\n\n" + textwrap.dedent('''
        def words(text: str) -> List[str]:
            """Split text into the words between runs of non-word characters."""
            # a comment survives
            return re.findall(r"\\w+", text)
        ''')
    candidate = examine(miner, source)
    assert candidate.code == ('import re\nfrom typing import List\n\n\ndef words(text: str) -> List[str]:\n'
                              '    # a comment survives\n    return re.findall(r"\\w+", text)\n')
    assert "`words(text: str) -> List[str]`" in candidate.instruction
    assert "Split text into the words" in candidate.instruction


def test_duplicates_exact_and_near(miner):
    assert not isinstance(examine(miner, NEAR), str)
    reformatted = NEAR.replace("counts = {}", "counts = {}  # word -> count").replace("width=40", "width = 40")
    assert examine(miner, reformatted) == "exact_duplicate"
    assert examine(miner, NEAR.replace("round(", "int(").replace('"#"', '"*"')) == "near_duplicate"


def write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def rows_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def code_of(row: dict) -> str:
    return row["messages"][1]["content"].removeprefix("```python\n").removesuffix("```")


def test_doctests_become_asserts_and_a_wrong_doctest_drops_the_row(tmp_path):
    src = write(tmp_path / "src", {"maths.py": DOCTESTED})
    stats = mine(MineConfig(corpus=str(src), out=str(tmp_path / "rows.jsonl"), workers=1))
    [row] = rows_of(tmp_path / "rows.jsonl")
    assert row["entry_point"] == "add" and stats.dropped == {"doctest_failed": 1}
    # expressions calling the function become asserts with the recorded value; `total` needs its setup line
    assert row["tests"] == ["assert add(1, 2) == 3", "assert [add(x, 1) for x in range(3)] == [1, 2, 3]"]
    assert run(code_of(row), "\n".join(row["tests"])).status == "passed"
    assert stats.rows_with_tests == 1 and stats.asserts == 2


def test_no_tests_keeps_doctested_rows_without_running_them(tmp_path):
    src = write(tmp_path / "src", {"maths.py": DOCTESTED})
    stats = mine(MineConfig(corpus=str(src), out=str(tmp_path / "rows.jsonl"), tests=False))
    assert [r["tests"] for r in rows_of(tmp_path / "rows.jsonl")] == [[], []] and not stats.dropped


def test_a_planted_humaneval_solution_is_removed(tmp_path):
    problem = load_problems()[0]
    src = write(tmp_path / "src", {"solution.py": problem["prompt"] + problem["canonical_solution"],
                                   "util.py": GOOD})
    stats = mine(MineConfig(corpus=str(src), out=str(tmp_path / "rows.jsonl"), tests=False))
    assert stats.dropped == {"contaminated": 1}
    assert [r["entry_point"] for r in rows_of(tmp_path / "rows.jsonl")] == ["clamp"]


def test_rows_carry_messages_provenance_and_tests(tmp_path):
    src = write(tmp_path / "src", {"pkg/shapes.py": GOOD + '\n\nclass Box:\n    def area(self, w, h):\n'
                                   '        """Return the area of a box of width w and height h."""\n'
                                   '        return w * h\n'})
    out = tmp_path / "out" / "rows.jsonl"
    mine(MineConfig(corpus=str(src), out=str(out), tests=False))
    rows = rows_of(out)
    assert [set(r) for r in rows] == [{"messages", "provenance", "tests", "entry_point"}] * 2
    function, method = rows
    assert [m["role"] for m in function["messages"]] == ["user", "assistant"]
    assert function["messages"][1]["content"].startswith("```python\ndef clamp(value, low, high):\n")
    assert function["provenance"] == {"repo": "src", "path": "pkg/shapes.py", "line": 2, "function": "clamp",
                                      "kind": "function", "license": "", "source": "src", "miner": MINER,
                                      "template": function["provenance"]["template"]}
    assert function["provenance"]["template"] in TEMPLATES and method["provenance"]["template"].startswith("method/")
    assert method["provenance"]["function"] == "Box.area" and "Box" in method["messages"][0]["content"]
    stats = json.loads((tmp_path / "out" / "rows.stats.json").read_text())
    assert stats["rows"] == 2 and stats["config"]["seed"] == 0 and stats["miner"] == MINER


def test_the_output_is_deterministic_for_a_seed(tmp_path):
    files = {f"m{i}.py": GOOD.replace("clamp", f"clamp{i}").replace("low", f"low{i}") for i in range(12)}
    src = write(tmp_path / "src", files)
    runs = {}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        mine(MineConfig(corpus=str(src), out=str(tmp_path / f"{name}.jsonl"), seed=seed, tests=False))
        runs[name] = (tmp_path / f"{name}.jsonl").read_bytes()
    assert runs["a"] == runs["b"] and runs["a"] != runs["c"]
    assert len({r["provenance"]["template"] for r in rows_of(tmp_path / "a.jsonl")}) > 1


def test_a_curated_corpus_in_both_layouts_and_a_corrupt_shard(tmp_path):
    src = write(tmp_path / "src", {"maths.py": DOCTESTED, "util.py": GOOD, "notes.md": "# not code\n"})
    for layout in ("file", "repo"):
        cfg = load_curate_config(None, [str(src)], ["executor.tasks=1", "executor.workers=1", f'layout="{layout}"'])
        corpus = curate(cfg, tmp_path / layout)
        stats = mine(MineConfig(corpus=str(corpus), out=str(tmp_path / f"{layout}.jsonl"), workers=1))
        rows = rows_of(tmp_path / f"{layout}.jsonl")
        assert {r["entry_point"]: r["provenance"]["path"] for r in rows} == {"add": "maths.py", "clamp": "util.py"}
        assert stats.dropped == {"doctest_failed": 1}
    (corpus / "data" / "src" / "broken.parquet").write_bytes(b"PAR1 not really parquet")
    stats = mine(MineConfig(corpus=str(corpus), out=str(tmp_path / "again.jsonl"), tests=False))
    assert stats.skipped["corrupt_shard"] == 1 and stats.rows == 3


def test_limit(tmp_path):
    src = write(tmp_path / "src", {f"m{i}.py": GOOD.replace("clamp", f"clamp{i}").replace("low", f"l{i}")
                                   for i in range(5)})
    assert mine(MineConfig(corpus=str(src), out=str(tmp_path / "rows.jsonl"), limit=2, tests=False)).rows == 2
    assert len(rows_of(tmp_path / "rows.jsonl")) == 2


def test_cli_defaults_come_from_the_config_and_bad_input_is_one_line(tmp_path, capsys):
    args = build_parser().parse_args(["synth", "mine", "--corpus", "c", "--out", "o.jsonl"])
    assert resolve(args).mine == MineConfig(corpus="c", out="o.jsonl")
    assert resolve(build_parser().parse_args(["synth", "mine", "--corpus", "c", "--out", "o",
                                              "--no-tests"])).mine.tests is False
    empty = write(tmp_path / "empty", {"m.py": "def f(x):\n    return x\n"})
    for corpus, message in ((tmp_path / "nope", "corpus path not found"), (empty, "no rows mined from")):
        with pytest.raises(SystemExit) as exit:
            main(["synth", "mine", "--corpus", str(corpus), "--out", str(tmp_path / "rows.jsonl")])
        err = capsys.readouterr().err.strip().splitlines()
        assert exit.value.code == 2 and message in err[-1] and err[-1].startswith("codelm: error:")
    assert not (tmp_path / "rows.jsonl").exists()
    with pytest.raises(UserError, match="max-lines"):
        MineConfig(corpus="c", out="o", max_lines=0).check()


STDLIB_SLICE = ["json", "textwrap.py", "difflib.py", "statistics.py", "fractions.py", "bisect.py", "heapq.py",
                "string.py"]


def test_a_slice_of_the_stdlib(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in STDLIB_SLICE:
        if name.endswith(".py"):
            shutil.copy(stdlib_root() / name, src / name)
        else:
            shutil.copytree(stdlib_root() / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    stats = mine(MineConfig(corpus=str(src), out=str(tmp_path / "rows.jsonl")))
    rows = rows_of(tmp_path / "rows.jsonl")
    assert 20 <= stats.rows == len(rows) <= stats.functions // 4 and stats.rows_with_tests >= 2
    for row in rows:
        [fn] = [n for n in ast.parse(code_of(row)).body if isinstance(n, ast.FunctionDef)]
        assert fn.name == row["entry_point"] and ast.get_docstring(fn) is None
    # the recorded asserts hold for the response alone
    results = run_many([(code_of(row), "\n".join(row["tests"])) for row in rows if row["tests"]])
    assert [r.status for r in results] == ["passed"] * stats.rows_with_tests
