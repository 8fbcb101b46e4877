"""A procedural family of verifiable programming tasks, generated offline from a seed: RL's test bench in CI.

Each task is a one-argument integer function whose docstring states a chain of
arithmetic steps applied left to right ("Return x times 3, then plus 2."):

    def scale_7(x):
        \"\"\"Return x times 3, then plus 2.\"\"\"

The reference body is `return (x * 3) + 2`; the tests check it on fixed inputs.
`difficulty` is the number of steps (1 to 4) and widens the constants, so one
knob moves the family from trivial to hard for a tiny model. Tasks are
HumanEval-shaped dicts (task_id, prompt, canonical_solution, test,
entry_point), so every path that runs HumanEval runs them. The same (seed,
count, difficulty) gives the same tasks on every machine; none resembles a
HumanEval problem (`collection.decontaminate` checks all the same).
"""

import random

OPERATIONS = {"plus": "+", "minus": "-", "times": "*"}
NAMES = ["scale", "shift", "adjust", "transform", "compute", "step", "combine", "apply"]
TEST_INPUTS = (-3, 0, 1, 2, 5, 11)
MAX_DIFFICULTY = 4


def steps(rng: random.Random, difficulty: int) -> list[tuple[str, int]]:
    top = 5 + 5 * difficulty  # constants widen with difficulty
    return [(rng.choice(list(OPERATIONS)), rng.randint(1, top)) for _ in range(rng.randint(1, difficulty))]


def expression(chain: list[tuple[str, int]]) -> str:
    """Python for the chain applied left to right: `(x * 3) + 2`."""
    code = "x"
    for i, (word, constant) in enumerate(chain):
        code = f"{'(' + code + ')' if i else code} {OPERATIONS[word]} {constant}"
    return code


def task(seed: int, index: int, difficulty: int) -> dict:
    rng = random.Random(f"procedural/{seed}/{difficulty}/{index}")
    chain = steps(rng, difficulty)
    name = f"{rng.choice(NAMES)}_{index}"
    words = ", then ".join(f"{word} {constant}" for word, constant in chain)
    prompt = f'def {name}(x):\n    """Return x {words}."""\n'
    body = f"    return {expression(chain)}\n"
    answers = {x: eval(expression(chain), {"x": x}) for x in TEST_INPUTS}  # our own expression, not user input
    checks = "".join(f"    assert candidate({x}) == {y}\n" for x, y in answers.items())
    return {"task_id": f"procedural/{seed}/{difficulty}/{index}", "prompt": prompt, "canonical_solution": body,
            "test": f"def check(candidate):\n{checks}", "entry_point": name}


def generate(count: int, seed: int = 0, difficulty: int = 1) -> list[dict]:
    """`count` tasks of the family; difficulty from 1 (one step, constants up to 10) to MAX_DIFFICULTY."""
    if not 1 <= difficulty <= MAX_DIFFICULTY:
        raise ValueError(f"difficulty must be from 1 to {MAX_DIFFICULTY}; got {difficulty}")
    return [task(seed, i, difficulty) for i in range(count)]
