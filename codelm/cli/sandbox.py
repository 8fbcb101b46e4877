"""`codelm sandbox run`: one program under the evaluator's isolation (codelm.sandbox)."""

import json
import sys
from dataclasses import asdict

from codelm.cli.options import Settings, add_command, add_group, read_input, resolve, sections_root
from codelm.sandbox.supervisor import Limits

SETTINGS = Settings(sections_root("sandbox", limits=Limits), ("limits",), every_field=True)


def sandbox(sub, name, text):
    parser = add_command(add_group(sub, name, text), "run", "run one program (and optional tests) in the sandbox; "
                         "prints the result", (
                             "Run a Python file (or - for stdin) as the evaluator runs generated code: its own "
                             "process as an unprivileged user, resource limits, a wall-clock timeout, a fresh "
                             "directory, a scrubbed environment, and no network (network and PID namespaces when "
                             "available, else a socket guard). Exit status 0 only when it passed."), run, SETTINGS)
    parser.add_argument("file", help="Python file, or - for standard input")
    parser.add_argument("--tests", help="file of tests run after the program (asserts)")


def run(args):
    from codelm.sandbox.supervisor import run as run_sandboxed

    limits = resolve(args).limits
    program = read_input(args.file)
    tests = read_input(args.tests) if args.tests else ""
    result = run_sandboxed(program, tests, limits)
    print(json.dumps(asdict(result), indent=2))
    sys.exit(0 if result.status == "passed" else 1)
