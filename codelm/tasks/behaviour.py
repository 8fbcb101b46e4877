"""What a program does on a shared set of inputs: the evidence behaviour clustering (codelm.eval.uncertainty) uses.

For code, two answers mean the same when they behave the same, so sampled
programs are compared by running each on the same inputs. The inputs come only
from what the model is shown: every call of the entry point written in the
prompt (HumanEval's `>>> f(x)` lines, `f(x) == y`, MBPP's example assert) and
every example stated as parameter values (`For lst = [1, 2] the output ...`)
gives a seed argument tuple (with none, one built from the type annotations
of the signature), and type-guided fuzzing mutates seeds argument by
argument within each value's type (an int moves by one or flips sign, a list
loses, gains or reorders items, a string is cut, extended or reversed, ...),
from a fixed seed, so every program of a problem sees the same inputs. Inputs
the hidden tests use (literal calls in the task's test code, EvalPlus's base
and plus inputs) are removed from the fuzzed ones: agreement is never measured
on the grader's own inputs unless the prompt shows them, and no test outcome is
ever read.

A probe runs one program on every input in the sandbox. Each call gets its own
wall-clock limit and a deep copy of its arguments; its outcome is a digest of
the returned value's canonical form (floats to 9 decimals and 10 significant
digits, sets and dict items sorted, default reprs without their address), the
type of the exception it raised, or a timeout. A program that cannot be loaded
gets one outcome on every input: its sandbox outcome and exception type.
"""

import ast
import hashlib
import inspect
import itertools
import json
import random
import re
import string

from codelm.sandbox.supervisor import Limits, Result, run_many
from codelm.tasks.collection import outcome

CALL_TIMEOUT = 0.5  # seconds of wall time per call
MARK = "@@codelm-behaviour@@"
MAX_INT = 1000  # fuzzed ints stay this small unless a seed is larger: range(10**9) would only time out


def canonical(value, depth=0) -> str:
    """A value as text that equal behaviour gives equally: float noise, set and dict order, addresses removed."""
    if depth > 50:
        return "..."
    if isinstance(value, bool) or value is None:
        return repr(value)
    if isinstance(value, float):  # 0.1 + 0.2 - 0.3 is 0 here, as within EvalPlus's tolerance
        return format(round(value, 9) + 0.0, ".10g")
    if isinstance(value, complex):
        return f"complex({canonical(value.real)},{canonical(value.imag)})"
    if isinstance(value, (list, tuple)):
        return type(value).__name__ + "[" + ",".join(canonical(v, depth + 1) for v in value) + "]"
    if isinstance(value, (set, frozenset)):
        return "set{" + ",".join(sorted(canonical(v, depth + 1) for v in value)) + "}"
    if isinstance(value, dict):
        items = sorted(canonical(k, depth + 1) + ":" + canonical(v, depth + 1) for k, v in value.items())
        return "dict{" + ",".join(items) + "}"
    text = repr(value)
    return "<" + type(value).__name__ + ">" if " at 0x" in text else text


def value_outcome(value) -> str:
    """A returned value as an outcome: a digest of its canonical form, as the probe reports it (and as a
    model-written test's expected value is compared with it: codelm.tasks.model_tests)."""
    return "value:" + hashlib.sha1(canonical(value).encode()).hexdigest()[:16]


PROBE = """
def _codelm_probe():
    import copy
    import io
    import json
    import os
    import signal
    import sys

    class CallTimeout(BaseException):
        pass

    def over_time(signum, frame):
        raise CallTimeout()

    helpers = {{}}
    exec({helpers!r}, helpers)
    inputs = eval({inputs!r}, {{"inf": float("inf"), "nan": float("nan")}})
    function = globals().get({entry!r})
    if not callable(function):
        found = ["missing:" + {entry!r}] * len(inputs)
    else:
        found = []
        signal.signal(signal.SIGALRM, over_time)
        for args in inputs:
            stdout, sys.stdout = sys.stdout, io.StringIO()
            try:
                signal.setitimer(signal.ITIMER_REAL, {timeout!r})
                try:
                    value = function(*copy.deepcopy(args))
                finally:
                    signal.setitimer(signal.ITIMER_REAL, 0)
                found.append(helpers["value_outcome"](value))
            except CallTimeout:
                found.append("timeout")
            except BaseException as e:
                found.append("raise:" + type(e).__name__)
            finally:
                sys.stdout = stdout
    os.write(1, ("\\n" + {mark!r} + json.dumps(found) + "\\n").encode())


_codelm_probe()
"""


def example_calls(text: str, name: str) -> list[tuple]:
    """Argument tuples of every call `name(...)` written in text whose arguments are all literals."""
    calls = []
    for match in re.finditer(rf"(?<![\w.]){re.escape(name)}\s*\(", text):
        for end in range(match.end(), min(len(text), match.end() + 4000)):
            if text[end] != ")":
                continue
            try:
                node = ast.parse(text[match.start():end + 1], mode="eval").body
            except SyntaxError:
                continue
            if isinstance(node, ast.Call) and not node.keywords:
                try:
                    calls.append(tuple(ast.literal_eval(arg) for arg in node.args))
                except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
                    pass
            break
    return calls


def _longest_literal(text: str):
    """The longest prefix of text (not ending in a comma) that is a Python literal, as a 1-tuple; () if none."""
    for end in range(len(text), 0, -1):
        candidate = text[:end].strip()
        if candidate and not candidate.endswith(","):
            try:
                return (ast.literal_eval(candidate),)
            except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
                continue
    return ()


def stated_examples(prompt: str, name: str) -> list[tuple]:
    """Examples written as assignments to the parameters on one line (`For s = "ab", c = "b" the result ...`), or,
    for one parameter, as `Input: [4, 2, 3]`."""
    params = signature(prompt, name)
    if not params:
        return []
    found = []
    for line in prompt.splitlines():
        values = []
        for param in params:
            match = re.search(rf"(?<![\w.]){re.escape(param)}\s*=\s*(?!=)", line)
            values += _longest_literal(line[match.end():]) if match else []
        if len(values) < len(params) and len(params) == 1 and re.match(r"\s*Input:", line):
            values = list(_longest_literal(line.split(":", 1)[1]))
        if len(values) == len(params):
            found.append(tuple(values))
    return found


def signature(prompt: str, name: str) -> list[str]:
    """The positional parameter names of `name` as the prompt defines it ([] when it does not)."""
    function = _definition(prompt, name)
    return [a.arg for a in function.args.posonlyargs + function.args.args] if function else []


def _definition(prompt: str, name: str) -> ast.FunctionDef | None:
    try:
        tree = ast.parse(prompt)
    except SyntaxError:
        return None
    return next((n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == name), None)


TYPE_EXAMPLES = {"int": [3, -1, 0, 7, 12], "float": [2.5, -1.0, 0.0, 3.75], "str": ["abc", "Hello World", "a", ""],
                 "bool": [True, False]}
CONTAINERS = {"list": list, "List": list, "tuple": tuple, "Tuple": tuple, "set": set, "Set": set}


def annotated_example(prompt: str, name: str) -> tuple | None:
    """One input built from the parameters' type annotations (int, float, str, bool, lists, tuples, sets and
    dicts of those, Optional), when the prompt shows no example call; None if a parameter has no usable one."""
    function = _definition(prompt, name)
    if function is None:
        return None
    values = [_typed_value(a.annotation, 0) for a in function.args.posonlyargs + function.args.args]
    return tuple(values) if values and all(v is not None for v in values) else None


def _typed_value(annotation, depth: int):
    if isinstance(annotation, ast.Name) and annotation.id in TYPE_EXAMPLES:
        return TYPE_EXAMPLES[annotation.id][depth % len(TYPE_EXAMPLES[annotation.id])]
    if not isinstance(annotation, ast.Subscript) or not isinstance(annotation.value, ast.Name):
        return None
    outer = annotation.value.id
    inner = annotation.slice.elts if isinstance(annotation.slice, ast.Tuple) else [annotation.slice]
    if outer == "Optional":
        return _typed_value(inner[0], depth)
    if outer in ("dict", "Dict") and len(inner) == 2:
        key, value = _typed_value(inner[0], depth), _typed_value(inner[1], depth + 1)
        return None if key is None or value is None else {key: value}
    if outer in CONTAINERS:
        items = [_typed_value(inner[0], depth + i) for i in range(3)]
        return None if None in items else CONTAINERS[outer](items)
    return None


def hidden_inputs(task: dict) -> list[tuple]:
    """The arguments the task's tests call its function with, where they are literals: calls of `candidate` or of
    the entry point in the test code, and the inputs a task lists as its tests' (EvalPlus)."""
    found = [tuple(args) for args in task.get("test_inputs", [])]
    try:
        tree = ast.parse(task["test"])
    except SyntaxError:
        return found
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and not node.keywords
                and node.func.id in ("candidate", task["entry_point"])):
            try:
                found.append(tuple(ast.literal_eval(arg) for arg in node.args))
            except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
                pass
    return found


def mutate(value, rng: random.Random):
    """A nearby value of the same type: how fuzzing explores around a seed."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        bound = max(MAX_INT, abs(value))
        return max(-bound, min(bound, rng.choice([value + 1, value - 1, 0, -value, 2 * value,
                                                  value + rng.randint(-10, 10), rng.randint(-bound, bound)])))
    if isinstance(value, float):
        return rng.choice([value + 0.5, value - 1.0, 0.0, -value, value * 2.5, round(rng.uniform(-10, 10), 2)])
    if isinstance(value, str):
        letter = rng.choice(string.ascii_letters + string.digits + " ")
        at = rng.randint(0, len(value))
        return rng.choice(["", value[::-1], value[1:], value[:-1], value + letter, value[:at] + letter + value[at:],
                           value.swapcase(), value * 2])[:200]
    if isinstance(value, (list, tuple)):
        items = list(value)
        choices = [[], items[::-1], items[:-1], items[1:]]
        if items:
            at = rng.randrange(len(items))
            choices += [items + [mutate(rng.choice(items), rng)],
                        items[:at] + [mutate(items[at], rng)] + items[at + 1:], rng.sample(items, len(items))]
        return type(value)(rng.choice(choices)[:50])
    if isinstance(value, dict):
        if not value:
            return value
        key = rng.choice(list(value))
        return rng.choice([{}, {k: v for k, v in value.items() if k != key}, {**value, key: mutate(value[key], rng)}])
    if isinstance(value, (set, frozenset)):
        items = list(value)
        extra = [mutate(rng.choice(items), rng)] if items else []
        return type(value)(rng.choice([[], items[1:], items + extra]))
    return value


def variants(seeds: list[tuple], rng: random.Random):
    """Fuzzed variants of the seeds, without end: one argument mutated, or (three times in ten) every one."""
    while True:
        args = list(rng.choice(seeds))
        for i in range(len(args)) if rng.random() < 0.3 else [rng.randrange(len(args))]:
            args[i] = mutate(args[i], rng)
        yield tuple(args)


def shared_inputs(task: dict, count: int, seed: int = 0) -> list[tuple]:
    """The prompt's examples, then fuzzed variants of them (or an input built from the annotations and its
    variants), up to `count` distinct inputs; beyond what the prompt shows, none that the hidden tests use."""
    text, name = task["prompt"] + task.get("instruction", ""), task["entry_point"]
    shown = example_calls(text, name) + stated_examples(task["prompt"], name)
    seeds = shown or [example for example in [annotated_example(task["prompt"], name)] if example is not None]
    chosen, seen = [], set()
    for args in shown[:count]:
        if canonical(args) not in seen:
            seen.add(canonical(args))
            chosen.append(args)
    hidden = {canonical(args) for args in hidden_inputs(task)} - seen
    fuzzable = [args for args in seeds if args]
    fuzzed = itertools.islice(variants(fuzzable, random.Random(f"{seed}/{task['task_id']}")),
                              50 * count if fuzzable else 0)
    for args in itertools.chain([] if shown else seeds, fuzzed):
        if len(chosen) >= count:
            break
        if canonical(args) not in seen and canonical(args) not in hidden:
            seen.add(canonical(args))
            chosen.append(args)
    return chosen


def probe(program: str, entry_point: str, inputs: list[tuple]) -> tuple[str, str]:
    """(program, probe) for the sandbox: the probe calls the entry point on every input and prints the outcomes."""
    helpers = "import hashlib\n" + inspect.getsource(canonical) + inspect.getsource(value_outcome)
    return program, PROBE.format(helpers=helpers, inputs=repr(inputs), entry=entry_point,
                                 timeout=CALL_TIMEOUT, mark=MARK)


def probe_limits(inputs: int) -> Limits:
    """Room for every call to reach its own limit, so one slow input does not cost the others their outcomes."""
    seconds = int(CALL_TIMEOUT * inputs) + 5
    return Limits(cpu_seconds=seconds, wall_seconds=seconds + 5, output_chars=1_000_000)


def outcomes(result: Result, inputs: int) -> tuple[str, ...]:
    """One outcome per input from a probe's sandbox result; a program that never reached the calls gets its load
    failure (sandbox outcome and exception type) on every input."""
    found = result.stdout.rpartition("\n" + MARK)[2].partition("\n")[0] if MARK in result.stdout else ""
    if result.status == "passed" and found:
        try:
            return tuple(json.loads(found))
        except ValueError:
            pass
    kind = result.detail.strip().rpartition("\n")[2].partition(":")[0].strip()
    return (f"program:{outcome(result)}:{kind}",) * inputs


def behaviours(jobs: list[tuple[str, str, list[tuple]]], workers: int = 0) -> list[tuple[str, ...]]:
    """Outcome vectors of (program, entry point, inputs) triples, run in parallel sandboxes."""
    longest = max((len(inputs) for _, _, inputs in jobs), default=0)
    results = run_many([probe(*job) for job in jobs], probe_limits(longest), workers, progress="behaviour")
    return [outcomes(result, len(inputs)) for result, (_, _, inputs) in zip(results, jobs)]
