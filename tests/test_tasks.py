"""Task sources with tests: the procedural family, task files, validation at load, outcomes, the hash split."""

import json

import pytest

from codelm.errors import UserError
from codelm.sandbox.supervisor import Limits, run_many
from codelm.tasks import collection, procedural


def test_procedural_tasks_are_reproducible_and_their_solutions_pass():
    tasks = procedural.generate(12, seed=3, difficulty=3)
    assert tasks == procedural.generate(12, seed=3, difficulty=3)
    assert tasks != procedural.generate(12, seed=4, difficulty=3)
    assert len({t["task_id"] for t in tasks}) == 12
    collection.validate(tasks)  # raises if one reference fails its own tests


def test_difficulty_is_the_number_of_steps():
    easy = procedural.generate(50, difficulty=1)
    hard = procedural.generate(50, difficulty=4)
    assert all(t["prompt"].count(", then ") == 0 for t in easy)
    assert max(t["prompt"].count(", then ") for t in hard) == 3
    with pytest.raises(ValueError, match="difficulty must be from 1 to 4"):
        procedural.generate(1, difficulty=5)


def test_a_wrong_body_fails_the_tests():
    (t,) = procedural.generate(1, seed=0, difficulty=2)
    wrong = t["canonical_solution"].replace("return ", "return 1 + ")
    (result,) = run_many([collection.program(t, wrong)], Limits(cpu_seconds=5, wall_seconds=10))
    assert collection.outcome(result) == "failed"


def test_outcomes_tell_syntax_errors_crashes_timeouts_and_early_exits_apart():
    jobs = [("def f(:\n    pass\n", "assert True"), ("raise ValueError('no')\n", ""), ("while True:\n    pass\n", ""),
            ("import sys\nsys.exit(0)\n", "assert False"), ("x = 1\n", "assert x == 1")]
    results = run_many(jobs, Limits(cpu_seconds=1, wall_seconds=3))
    assert [collection.outcome(r) for r in results] == ["syntax_error", "error", "timeout", "failed", "passed"]


def test_task_files_in_humaneval_and_synth_shape(tmp_path):
    humaneval_row = {"task_id": "t/0", "prompt": "def two():\n", "canonical_solution": "    return 2\n",
                     "test": "def check(candidate):\n    assert candidate() == 2\n", "entry_point": "two"}
    synth_row = {"messages": [{"role": "user", "content": "Write `inc(x)` returning x + 1."},
                              {"role": "assistant", "content": "```python\ndef inc(x):\n    return x + 1\n```"}],
                 "entry_point": "inc", "tests": ["assert inc(1) == 2", "assert inc(-1) == 0"]}
    untested = {**synth_row, "tests": []}
    path = tmp_path / "tasks.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in (humaneval_row, synth_row, untested)))
    tasks, skipped = collection.load(str(path))
    assert skipped == 1 and [t["entry_point"] for t in tasks] == ["two", "inc"]
    assert tasks[1]["instruction"].startswith("Write `inc(x)`")
    collection.validate(tasks)


def test_a_task_whose_tests_reject_its_own_solution_is_named(tmp_path):
    (t,) = procedural.generate(1)
    broken = {**t, "test": t["test"].replace("assert candidate(0) ==", "assert candidate(0) == 1 +")}
    with pytest.raises(UserError, match=r"task procedural/0/1/0: its tests do not pass against its own reference"):
        collection.validate([broken])


def test_bad_task_sources_are_named(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "def f():\\n"}\n')
    with pytest.raises(UserError, match=r"bad.jsonl:1: a task needs .* missing canonical_solution, test, entry_point"):
        collection.load(str(path))
    with pytest.raises(UserError, match="expected procedural:COUNT:DIFFICULTY:SEED"):
        collection.load("procedural:many")
    with pytest.raises(UserError, match="task file not found"):
        collection.load(str(tmp_path / "missing.jsonl"))


def test_split_is_stable_and_disjoint():
    tasks = procedural.generate(400)
    train, held = collection.split(tasks, 0.2)
    assert not {t["task_id"] for t in train} & {t["task_id"] for t in held}
    assert len(train) + len(held) == 400 and 50 < len(held) < 110
    assert collection.split(list(reversed(tasks)), 0.2)[1] == list(reversed(held))  # by id, not by position


def test_tasks_copying_humaneval_are_dropped():
    from codelm.data.decontam import decontaminate_tasks
    from codelm.tasks.humaneval import load_problems

    copied = {**load_problems()[0], "task_id": "mine/copied"}
    kept, dropped = decontaminate_tasks([*procedural.generate(20), copied])
    assert dropped == ["mine/copied"] and len(kept) == 20
