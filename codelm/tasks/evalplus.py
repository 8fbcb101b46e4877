"""HumanEval+ and MBPP+ (EvalPlus, Liu et al. 2023) from their published files, scored as EvalPlus scores them.

HumanEvalPlus.jsonl and MbppPlus.jsonl (optionally .gz), read from a path the
user gives: one object a line with task_id ("HumanEval/0", "Mbpp/2"), prompt,
entry_point, canonical_solution, base_input and plus_input (lists of argument
lists) and atol (other fields, such as contract, are not used). EvalPlus has
no assert-style tests: a program passes when, on every base and plus input,
its output matches what the reference (prompt + canonical_solution) returns,
compared as EvalPlus's check_output does (same_output below: exact equality;
floats within atol, 1e-6 when atol is 0, at rtol 1e-7; its special oracles for
find_zero, set-valued and not-None MBPP tasks and four more), each call within
EvalPlus's time limit (4x the reference's time on that input, at least 1 s).
MBPP+ stores tuples, sets and complex numbers as JSON lists and strings; they
are rebuilt per task id as EvalPlus's mbpp_deserialize_inputs does.

So this is EvalPlus's "plus" score (base and plus inputs together). The test
runs the reference in the sandbox beside the program, on deep copies of each
input, instead of embedding recorded outputs: nothing is serialized, at twice
the execution time. HumanEval+ prompts are HumanEval-shaped and used as they
are; an MBPP+ prompt is a docstring without a signature, so the task's prompt
is the reference's signature with that docstring (as for MBPP, codelm.tasks.mbpp).
"""

import inspect
import math
from pathlib import Path

from codelm.errors import UserError
from codelm.sandbox.supervisor import Limits
from codelm.tasks import humaneval, mbpp
from codelm.tasks.rows import read_rows

REQUIRED = ("task_id", "prompt", "entry_point", "canonical_solution", "base_input", "plus_input", "atol")
LIMITS = Limits(cpu_seconds=60, wall_seconds=90)  # hundreds of inputs, each run by the reference and the program
MIN_TIME_LIMIT, TIME_LIMIT_FACTOR = 1.0, 4.0  # EvalPlus's per-input limits (evalplus/config.py)
SET_EQUAL = {"similar_elements", "find_char_long", "common_in_nested_lists", "extract_singly", "larg_nnum",
             "intersection_array", "find_dissimilar", "Diff"}  # MBPP+ tasks whose output order does not matter
NOT_NONE = {"check_str", "text_match_three", "text_starta_endb"}  # MBPP+ tasks judged on returning something
MBPP_ORACLES = {"are_equivalent": "always", "sum_div": "or_zero", "surface_Area": "surface_area",
                "digit_distance_nums": "digit_distance"}


def _tuples(value):
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


# MBPP+ task number -> how one input's JSON arguments become the types the reference expects (evalplus/data/mbpp.py)
_REBUILD_GROUPS = [
    ((2, 116, 132, 143, 222, 261, 273, 394, 399, 421, 424, 429, 470, 560, 579, 596, 616, 630, 726, 740, 744, 809),
     lambda inp: [tuple(a) for a in inp]),
    ((63, 64, 70, 94, 120, 237, 272, 299, 400, 409, 417, 438, 473, 614, 780),
     lambda inp: [[tuple(x) for x in a] for a in inp]),
    ((75, 413, 444, 753), lambda inp: [[tuple(x) for x in inp[0]], inp[1]]),
    ((106, 750), lambda inp: [inp[0], tuple(inp[1])]),
    ((115,), lambda inp: [[set(item) if isinstance(item, list) and item else {} for item in inp[0]]]),
    ((124,), lambda inp: (float(inp[0]), complex(inp[1]))),
    ((250, 405, 446, 617, 720, 763, 808), lambda inp: [tuple(inp[0]), inp[1]]),
    ((259, 401, 445), lambda inp: [tuple(tuple(x) for x in a) for a in inp]),
    ((278,), lambda inp: [tuple(tuple(item) if isinstance(item, list) else item for item in inp[0])]),
    ((307,), lambda inp: [tuple(inp[0]), inp[1], inp[2]]),
    ((722,), lambda inp: [{key: tuple(value) for key, value in inp[0].items()}, *inp[1:]]),
    ((252,), lambda inp: [complex(inp[0])]),
    ((580, 615, 791), _tuples),
]
REBUILD = {number: rebuild for numbers, rebuild in _REBUILD_GROUPS for number in numbers}


def rebuild_inputs(task_id: str, inputs: list) -> list:
    """MBPP+ arguments with their tuples, sets and complex numbers back; other tasks' inputs as they are."""
    number = task_id.rpartition("/")[2]
    rebuild = REBUILD.get(int(number)) if task_id.startswith("Mbpp/") and number.isdigit() else None
    return [rebuild(inp) for inp in inputs] if rebuild else inputs


def oracle(task_id: str, entry_point: str) -> str:
    """Which of EvalPlus's special comparisons applies to a task ("" for plain differential testing)."""
    if task_id.startswith("HumanEval/") and entry_point == "find_zero":
        return "find_zero"
    if not task_id.startswith("Mbpp/"):
        return ""
    if entry_point in SET_EQUAL:
        return "set"
    if entry_point in NOT_NONE:
        return "not_none"
    return MBPP_ORACLES.get(entry_point, "")


def _poly(xs, x):
    return sum(coefficient * math.pow(x, i) for i, coefficient in enumerate(xs))


def _surface_area(base_edge, height):
    slant = math.sqrt((base_edge / 2) ** 2 + height ** 2)
    return round(base_edge ** 2 + 4 * (base_edge * slant) / 2)


def _digit_distance(a, b):
    a, b = str(a), str(b)
    width = max(len(a), len(b))
    return sum(abs(int(x) - int(y)) for x, y in zip(a.zfill(width), b.zfill(width)))


def is_floats(value) -> bool:
    """A float, or a non-empty list or tuple of floats: EvalPlus compares these with a tolerance."""
    if isinstance(value, float):
        return True
    return isinstance(value, (list, tuple)) and bool(value) and all(isinstance(v, float) for v in value)


def close(out, expected, atol) -> bool:
    """numpy.allclose(out, expected, rtol=1e-7, atol) for numbers and equally shaped sequences, without numpy."""
    if isinstance(expected, (list, tuple)):
        return (isinstance(out, (list, tuple)) and len(out) == len(expected)
                and all(close(o, e, atol) for o, e in zip(out, expected)))
    try:
        return abs(out - expected) <= atol + 1e-7 * abs(expected)
    except TypeError:
        return False


def same_output(args, out, expected, atol, special) -> bool:
    """EvalPlus's check_output: does a program's output on args match the reference's?"""
    exact = out == expected
    if special == "always":
        exact = True
    elif special == "or_zero":
        exact = exact or out == 0
    elif special == "surface_area":
        exact = exact or abs(out - _surface_area(*args)) <= atol
    elif special == "digit_distance":
        exact = exact or out == _digit_distance(*args)
    elif special == "set":
        exact = set(out) == set(expected)
    elif special == "not_none":
        exact = out == expected if isinstance(out, bool) else expected == (out is not None)
    elif special == "find_zero":
        return abs(_poly(*args, out)) <= atol
    if atol == 0 and is_floats(expected):
        atol = 1e-6
    if not exact and atol != 0:
        if type(out) is not type(expected):
            return False
        return close(out, expected, atol)
    return bool(exact)


COMPARISON = (_poly, _surface_area, _digit_distance, is_floats, close, same_output)  # shipped into the sandbox
HELPERS = "import math\n\n\n" + "\n\n".join(inspect.getsource(f) for f in COMPARISON)
TEST = """def check(candidate):
    import copy
    import signal
    import time

    def over_time(signum, frame):
        raise TimeoutError("over EvalPlus's time limit for this input")

    helpers = {{}}  # in a namespace of their own: the program's names stay its own
    exec({helpers!r}, helpers)
    inputs = eval({inputs!r}, {{"inf": float("inf"), "nan": float("nan")}})
    scope = {{"__name__": "reference"}}
    exec({reference!r}, scope)
    reference = scope[{entry!r}]
    signal.signal(signal.SIGALRM, over_time)
    for i, args in enumerate(inputs):
        start = time.perf_counter()
        expected = reference(*copy.deepcopy(args))
        limit = max({min_limit!r}, {factor!r} * (time.perf_counter() - start))
        if {special!r} == "not_none":
            expected = expected is not None
        signal.setitimer(signal.ITIMER_REAL, limit)
        try:
            out = candidate(*copy.deepcopy(args))
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        assert helpers["same_output"](args, out, expected, {atol!r}, {special!r}), (
            f"input {{i}}: {{repr(args)[:200]}} gave {{repr(out)[:200]}}, expected {{repr(expected)[:200]}}")
"""


def load(path: str | Path) -> list[dict]:
    """Every problem of HumanEvalPlus.jsonl or MbppPlus.jsonl (or .gz) as a task, in file order."""
    tasks = []
    for number, row in enumerate(read_rows(path, "EvalPlus"), 1):
        missing = [key for key in REQUIRED if key not in row]
        if missing:
            raise UserError(f"{path} row {number}: an EvalPlus task needs {', '.join(REQUIRED)}; missing "
                            f"{', '.join(missing)}")
        tasks.append(task_from_row(row))
    return tasks


def task_from_row(row: dict) -> dict:
    """One EvalPlus problem as a HumanEval-shaped task whose test is the differential test above."""
    task_id, entry = row["task_id"], row["entry_point"]
    inputs = rebuild_inputs(task_id, row["base_input"]) + rebuild_inputs(task_id, row["plus_input"])
    reference = row["prompt"] + row["canonical_solution"]
    if humaneval.defines(row["prompt"], entry):  # HumanEval+: the completion continues the prompt
        prompt, solution = row["prompt"], row["canonical_solution"]
    else:  # MBPP+: a docstring; the reference's signature goes in front of it
        request = row["prompt"].strip().removeprefix('"""').removesuffix('"""')
        prompt, solution = mbpp.signature_prompt(reference, entry, request), "\n" + row["canonical_solution"]
    test = TEST.format(helpers=HELPERS, inputs=repr(inputs), reference=reference, entry=entry,
                       min_limit=MIN_TIME_LIMIT, factor=TIME_LIMIT_FACTOR, atol=row["atol"],
                       special=oracle(task_id, entry))
    return {"task_id": task_id, "prompt": prompt, "canonical_solution": solution, "entry_point": entry,
            "test": test, "test_inputs": inputs}
