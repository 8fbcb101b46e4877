"""Bug-fix tasks: every task made fails its FAIL_TO_PASS tests with the patch applied and passes every listed test
with it reversed; the issue text never shows the patch; bad repositories and test commands are one line."""

import json
import shutil
import sys

import pytest
from conftest import run_codelm

from codelm.errors import UserError
from codelm.tasks.bugfix import apply_patch, make_tasks, mutations, per_test_outcomes, run_tests

STATS = '''def mean(values):
    """The average of values."""
    total = 0
    for v in values:
        total += v
    return total / len(values)


def clamp(x, low, high):
    if x < low:
        return low
    if x > high:
        return high
    return x


def window(items, size):
    return [items[i:i + size] for i in range(len(items) - size + 1)]


def power(base, exponent):
    return pow(base, exponent)
'''
TESTS = '''import unittest

from stats import clamp, mean, power, window


class TestStats(unittest.TestCase):
    def test_mean(self):
        self.assertEqual(mean([1, 2, 3, 6]), 3)

    def test_clamp_low(self):
        self.assertEqual(clamp(-5, 0, 10), 0)

    def test_clamp_high(self):
        self.assertEqual(clamp(15, 0, 10), 10)

    def test_clamp_inside(self):
        self.assertEqual(clamp(5, 0, 10), 5)

    def test_window(self):
        self.assertEqual(window([1, 2, 3], 2), [[1, 2], [2, 3]])

    def test_power(self):
        self.assertEqual(power(2, 3), 8)


if __name__ == "__main__":
    unittest.main()
'''
UNITTEST = f"{sys.executable} -m unittest -v"


@pytest.fixture
def repo(tmp_path):
    root = tmp_path / "stats"
    root.mkdir()
    (root / "stats.py").write_text(STATS)
    (root / "test_stats.py").write_text(TESTS)
    return root


def test_mutations_cover_every_kind_and_never_touch_tests(repo):
    found = mutations(repo)
    assert {m.kind for m in found} == {"compare", "arithmetic", "off_by_one", "swap_args", "remove_statement",
                                       "constant"}
    assert {m.path for m in found} == {"stats.py"}
    swap = next(m for m in found if m.kind == "swap_args" and "pow" in STATS.splitlines()[m.line - 1])
    assert "pow(exponent, base)" in swap.apply(STATS)


def test_every_task_fails_with_its_patch_and_passes_with_the_fix(repo, tmp_path):
    tasks = list(make_tasks(repo, UNITTEST, max_tasks=6, max_tries=60, seed=1, timeout=60))
    assert len(tasks) == 6 and (repo / "stats.py").read_text() == STATS  # the repository is never modified
    for task in tasks:
        copy = tmp_path / f"check-{task.instance_id}"
        shutil.copytree(repo, copy)
        apply_patch(copy, task.patch)
        broken, _ = run_tests(copy, UNITTEST, 60)
        assert all(not broken.get(t, False) for t in task.FAIL_TO_PASS)  # the bug is there
        assert all(broken[t] for t in task.PASS_TO_PASS) and task.FAIL_TO_PASS and task.PASS_TO_PASS
        apply_patch(copy, task.patch, reverse=True)
        fixed, _ = run_tests(copy, UNITTEST, 60)
        assert all(fixed[t] for t in task.FAIL_TO_PASS + task.PASS_TO_PASS)  # the reverse patch resolves it
        assert (copy / "stats.py").read_text() == STATS
        changed = [line[1:] for line in task.patch.splitlines() if line.startswith("+") and not line.startswith("++")]
        assert not any(line.strip() in task.problem_statement for line in changed)  # the issue never shows the fix
        assert task.FAIL_TO_PASS[0] in task.problem_statement


def test_outcomes_are_read_from_unittest_and_pytest_output():
    unittest_output = ("test_a (pkg.test_x.T.test_a) ... ok\ntest_b (pkg.test_x.T)\nThe b case ... FAIL\n"
                       "test_c (pkg.test_x.T) ... ERROR\n")
    assert per_test_outcomes(unittest_output) == {"pkg.test_x.T.test_a": True, "pkg.test_x.T.test_b": False,
                                              "pkg.test_x.T.test_c": False}
    assert per_test_outcomes("PASSED tests/t.py::test_a\nFAILED tests/t.py::test_b - assert 1 == 2\n") == {
        "tests/t.py::test_a": True, "tests/t.py::test_b": False}


def test_bad_repositories_and_test_commands_are_one_line(repo, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "test_only.py").write_text("def test_x():\n    assert True\n")
    with pytest.raises(UserError, match="no Python source outside its tests"):
        list(make_tasks(empty, UNITTEST))
    with pytest.raises(UserError, match="no per-test results"):
        list(make_tasks(repo, "echo nothing here"))
    (repo / "test_stats.py").write_text(TESTS.replace("== 3", "== 4").replace("assertEqual(mean([1, 2, 3, 6]), 3)",
                                                                              "assertEqual(mean([1]), 2)")
                                        .replace("), 0)", "), 1)").replace("), 10)", "), 11)")
                                        .replace("), 5)", "), 6)").replace("[[1, 2], [2, 3]]", "[]")
                                        .replace("), 8)", "), 9)"))
    with pytest.raises(UserError, match="every test fails before any mutation"):
        list(make_tasks(repo, UNITTEST))


@pytest.mark.slow
def test_the_command_writes_tasks(repo, tmp_path):
    out = tmp_path / "tasks.jsonl"
    proc = run_codelm("tasks", "bugfix", "--repo", repo, "--test-cmd", UNITTEST, "--out", out, "--max-tasks", "2",
                      "--max-tries", "40")
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 2 and proc.stdout.startswith("2 tasks ->") and all(r["FAIL_TO_PASS"] for r in rows)
    bad = run_codelm("tasks", "bugfix", "--repo", tmp_path / "nope", "--test-cmd", "true", "--out", out, check=False)
    assert bad.returncode == 2 and "not a directory" in bad.stderr
