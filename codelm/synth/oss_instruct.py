"""`codelm synth oss-instruct`: OSS-Instruct (Magicoder, Wei et al. 2023) - a teacher turns random snippets of
real code into self-contained problems with solutions and tests, one row each, provenance on each.

Snippets: cfg.n draws of min_lines..max_lines consecutive lines from the corpus's Python files (the reader
`synth mine` uses), starting on a non-blank line; the files come from a reservoir sample seeded by cfg.seed
(every file when the corpus has fewer than n), each draw's window from its own seed, so a corpus and a seed
give the same prompts. The teacher answers PROMPT in three sections, [Problem], [Solution] and [Tests], the
last two in ```python blocks. The row: the problem as the user's request, the solution's code as the
assistant's reply (in a python fence, as `synth mine` writes it), the test statements as its tests.

A reply is dropped, and counted under the reason, when it is: unfinished (max_new_tokens or the teacher's
context ran out), unparseable (no [Problem] text, or no python block under [Solution]), solution_does_not_parse,
tests_do_not_parse ([Tests] present but no Python with an assert), no_tests (with require_tests),
unsafe_module / unsafe_builtin (solution or tests use process, file, network or interpreter modules or
builtins, as `synth mine` refuses), exact_duplicate (the same solution after ast normalisation),
near_duplicate (the curation's MinHash), contaminated (problem or solution overlap HumanEval, the curation's
index), or tests_failed / tests_error / tests_timeout / tests_killed (the tests run against the solution in
the sandbox and did not pass). A reply without tests is kept untested ("tests": []) unless require_tests.
"""

import ast
import random
import re
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from codelm.errors import UserError
from codelm.sandbox.supervisor import Limits, Sandbox
from codelm.synth.common import (
    Novelty,
    TeacherStats,
    parse_code,
    python_blocks,
    source_files,
    unsafe_use,
)
from codelm.synth.config import OssInstructConfig
from codelm.synth.teacher import Journal, make_teacher, sampling

GENERATOR = "codelm.synth.oss-instruct/1"  # in every row's provenance; bump when the rows change
TEMPLATE = "oss-instruct/1"  # PROMPT's version, in every row's provenance
PROMPT = """Gain inspiration from the following random code snippet to create a high-quality programming \
problem, then solve it.

Code snippet:
```python
{snippet}
```

Answer in exactly three sections, each starting with its heading alone on a line:

[Problem]
A self-contained problem statement with all the context needed to understand and solve it, asking for one \
Python function whose name and signature it gives. Do not refer to the snippet.

[Solution]
A correct solution in one ```python block, using only the Python standard library.

[Tests]
One ```python block of assert statements that call the function and check what it returns: no test \
framework, no input, files or network."""
# a heading alone on its line, markdown emphasis or "#" around it allowed: "[Problem]", "## [Solution]", "**[Tests]**"
SECTION = re.compile(r"^[ \t#*]*\[(problem|solution|tests)\][ \t*:]*$", re.I | re.M)
TEST_LIMITS = Limits(cpu_seconds=5, wall_seconds=10)  # per reply's tests


@dataclass
class Snippet:
    text: str
    meta: dict  # the file's: repo, path, license, source
    line: int  # first line in the file, 1-based
    end_line: int  # last line, inclusive


@dataclass
class Candidate:
    """A reply that passed the static filters, waiting for its tests."""

    problem: str
    solution: str
    tests: list[str]  # top-level statements of the [Tests] block
    entry_point: str
    provenance: dict


def oss_instruct(cfg: OssInstructConfig) -> TeacherStats:
    """Snippets of cfg.corpus -> teacher -> filters -> cfg.out (JSONL rows) and its .stats.json, written only
    if some row survives."""
    corpus = Path(cfg.corpus)
    if not corpus.exists():
        raise UserError(f"corpus path not found: {cfg.corpus}")
    started = time.perf_counter()
    stats = TeacherStats()
    snippets = draw_snippets(cfg, corpus, stats)
    teacher = make_teacher(cfg.teacher)
    stats.teacher = teacher.id
    params = sampling(cfg.temperature, cfg.top_p, cfg.max_new_tokens, cfg.seed)
    novelty, rows, size = Novelty(), [], cfg.teacher.batch_size
    journal = Journal(cfg.out, cfg)
    with Sandbox(workers=cfg.workers, limits=TEST_LIMITS) as box:
        for begin in tqdm(range(0, len(snippets), size), desc="synth oss-instruct", unit=" batches"):
            batch = snippets[begin:begin + size]
            replies = journal.generate(teacher, str(begin), [[{"role": "user", "content": PROMPT.format(
                snippet=s.text)}] for s in batch], params)
            stats.requests += len(batch)
            candidates = []
            for draw, (snippet, reply) in enumerate(zip(batch, replies), begin):
                provenance = {"repo": snippet.meta.get("repo", ""), "path": snippet.meta.get("path", ""),
                              "line": snippet.line, "end_line": snippet.end_line,
                              "license": snippet.meta.get("license", ""), "source": snippet.meta.get("source", ""),
                              "teacher": teacher.id, "template": TEMPLATE, "seed": cfg.seed, "draw": draw,
                              "generator": GENERATOR}
                found = examine(reply, provenance, novelty, cfg.require_tests)
                if isinstance(found, str):
                    stats.dropped[found] += 1
                else:
                    candidates.append(found)
            rows += tested_rows(candidates, box, stats)
    journal.close(done=True)  # finished: a rerun asks again
    stats.write("oss-instruct", rows, cfg, GENERATOR, started)
    return stats


def draw_snippets(cfg: OssInstructConfig, corpus: Path, stats: TeacherStats) -> list[Snippet]:
    """cfg.n snippets: files by reservoir sampling (Algorithm R, seeded), each draw's window by its own seed."""
    rng, files, seen = random.Random(cfg.seed), [], 0
    for text, meta in source_files(corpus, stats.skipped):
        if not starts(text.splitlines(), cfg.min_lines):
            stats.skipped["too_short"] += 1
            continue
        seen += 1
        if len(files) < cfg.n:
            files.append((text, meta))
        elif (j := rng.randrange(seen)) < cfg.n:
            files[j] = (text, meta)
    if not files:
        raise UserError(f"no Python file in {cfg.corpus} has {cfg.min_lines} lines to draw a snippet from "
                        f"({stats.reasons()})")
    return [snippet(*files[draw % len(files)], random.Random(f"{cfg.seed}:{draw}"), cfg)
            for draw in range(cfg.n)]


def starts(lines: list[str], min_lines: int) -> list[int]:
    """Where a snippet may start: non-blank lines with min_lines lines from there to the end of the file."""
    return [i for i, line in enumerate(lines[:len(lines) - min_lines + 1]) if line.strip()]


def snippet(text: str, meta: dict, rng: random.Random, cfg: OssInstructConfig) -> Snippet:
    lines = text.splitlines()
    start = rng.choice(starts(lines, cfg.min_lines))
    chosen = lines[start:start + rng.randint(cfg.min_lines, cfg.max_lines)]
    while not chosen[-1].strip():
        chosen.pop()
    return Snippet(textwrap.dedent("\n".join(chosen)), meta, start + 1, start + len(chosen))


def parse_reply(reply: str) -> tuple[str, str, str | None] | str:
    """(problem, solution code, tests code or None) from the teacher's sections, or "unparseable"."""
    parts = SECTION.split(reply)
    sections: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2]):
        sections.setdefault(name.lower(), body.strip())
    problem, solution = sections.get("problem", ""), python_blocks(sections.get("solution", ""))
    if not problem or not solution:
        return "unparseable"
    tests = sections.get("tests")
    if tests is not None:
        tests = (python_blocks(tests) or [tests])[0]  # a block, or bare statements
    return problem, solution[0], tests


def examine(reply: str | None, provenance: dict, novelty: Novelty, require_tests: bool) -> Candidate | str:
    """The candidate, or the reason the reply is dropped (the static filters, then dedup and decontamination)."""
    if reply is None:
        return "unfinished"
    parsed = parse_reply(reply)
    if isinstance(parsed, str):
        return parsed
    problem, solution, tests = parsed
    solution_tree, tests_tree = parse_code(solution), parse_code(tests) if tests is not None else None
    if solution_tree is None:
        return "solution_does_not_parse"
    if tests is not None and (tests_tree is None or not any(isinstance(n, ast.Assert) for n in ast.walk(tests_tree))):
        return "tests_do_not_parse"
    if tests is None and require_tests:
        return "no_tests"
    reason = unsafe_use(solution_tree) or (unsafe_use(tests_tree) if tests_tree else None)
    if reason:
        return reason
    solution = solution.strip() + "\n"
    reason = novelty.reason(ast.unparse(solution_tree), solution, f"{problem}\n{solution}")
    if reason:
        return reason
    statements = [ast.get_source_segment(tests, node) for node in tests_tree.body] if tests_tree else []
    return Candidate(problem, solution, statements, entry_point(solution_tree, tests_tree), provenance)


def entry_point(solution: ast.Module, tests: ast.Module | None) -> str:
    """The top-level function (or class) of the solution that the tests call, else its first; "" if none."""
    defined = [n.name for n in solution.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]
    called = {n.id for n in ast.walk(tests) if isinstance(n, ast.Name)} if tests else set()
    return next((name for name in defined if name in called), defined[0] if defined else "")


def tested_rows(candidates: list[Candidate], box: Sandbox, stats: TeacherStats) -> list[dict]:
    """Rows of the candidates whose tests pass against their solution (run together in the sandbox), in order."""
    tested = [c for c in candidates if c.tests]
    results = dict(zip(map(id, tested), box.run_many([(c.solution, "\n".join(c.tests)) for c in tested])))
    rows = []
    for c in candidates:
        status = results[id(c)].status if id(c) in results else "passed"
        if status != "passed":
            stats.dropped[f"tests_{status}"] += 1
            continue
        rows.append({"messages": [{"role": "user", "content": c.problem},
                                  {"role": "assistant", "content": f"```python\n{c.solution}```"}],
                     "entry_point": c.entry_point, "tests": c.tests, "provenance": c.provenance})
    return rows
