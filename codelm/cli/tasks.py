"""`codelm tasks bugfix`: bug-fix tasks made from a repository and its tests (codelm.tasks.bugfix)."""

import json
import sys

from codelm.cli.options import Settings, add_command, add_group, resolve, sections_root
from codelm.tasks.bugfix import BugfixConfig

SETTINGS = Settings(sections_root("tasks", bugfix=BugfixConfig), ("bugfix",), every_field=True)


def tasks(sub, name, text):
    add_command(add_group(sub, name, text), "bugfix", "make bug-fix tasks from a repository and its tests", (
        "Inject bugs into a Python repository by AST mutations (comparison and arithmetic operators, off-by-one "
        "bounds, swapped arguments, removed statements, constants), keep each mutant that breaks some tests that "
        "passed while others still pass, and write one task per line: the patch that injects the bug, an issue "
        "text written from the failing tests' output (never the patch), FAIL_TO_PASS and PASS_TO_PASS. The "
        "repository is never modified: every test run is in a temporary copy."), run_bugfix, SETTINGS)


def run_bugfix(args):
    from pathlib import Path

    from codelm.io import atomic_write_bytes
    from codelm.tasks.bugfix import make_tasks

    cfg = resolve(args).bugfix

    def progress(tried: int, made: int, mutation):
        print(f"\r[bugfix] {tried} mutants tried, {made} tasks ({mutation.kind} in {mutation.path}:"
              f"{mutation.line})", end="", file=sys.stderr, flush=True)

    made = list(make_tasks(Path(cfg.repo), cfg.test_cmd, cfg.max_tasks, cfg.max_tries, cfg.seed, cfg.timeout,
                           progress))
    print(file=sys.stderr)
    atomic_write_bytes(cfg.out, [(json.dumps(t.to_json()) + "\n").encode() for t in made])
    kinds = {}
    for t in made:
        kinds[t.mutation] = kinds.get(t.mutation, 0) + 1
    print(f"{len(made)} tasks -> {cfg.out} {kinds}")
