"""The sandbox contains hostile programs and still scores the next program correctly."""

import os
import socket
import threading
import time

import pytest
from conftest import run_codelm

from codelm.sandbox.supervisor import Limits, Sandbox, run, run_many

GOOD = "def add(a, b):\n    return a + b\n"
TESTS = "assert add(2, 3) == 5\nassert add(-1, 1) == 0\n"
FAST = Limits(cpu_seconds=5, wall_seconds=8, memory_mb=512)


def assert_next_program_scores(expected_passed=True):
    result = run(GOOD, TESTS, FAST)
    assert result.status == ("passed" if expected_passed else "failed"), result


@pytest.fixture
def listening_port():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    threading.Thread(target=lambda: server.accept(), daemon=True).start()
    yield server.getsockname()[1]
    server.close()


def test_good_wrong_and_crashing_programs():
    assert run(GOOD, TESTS).status == "passed"
    assert run(GOOD.replace("a + b", "a - b"), TESTS).status == "failed"
    error = run(GOOD + "raise KeyError('boom')\n", TESTS)
    assert error.status == "error" and "KeyError" in error.detail
    printed = run("print('hello')", "")
    assert printed.status == "passed" and printed.stdout == "hello\n"


HOSTILE = {
    "infinite loop": ("while True:\n    pass\n", "timeout|killed"),
    "fork bomb": ("import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n",
                  "timeout|killed|error"),
    "memory bomb": ("x = []\nwhile True:\n    x.append(' ' * 10**8)\n", "killed"),
    "1 GB of output": ("import sys\nchunk = 'x' * 2**20\nfor _ in range(1024):\n    sys.stdout.write(chunk)\n",
                       "killed|error"),
    "sys.exit(0) before the tests": (GOOD + "import sys\nsys.exit(0)\n", "failed"),
    "os._exit(0) before the tests": (GOOD + "import os\nos._exit(0)\n", "failed"),
    "segfault through ctypes": ("import ctypes\nctypes.string_at(0)\n", "killed"),
    "ignores SIGTERM": ("import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\ntime.sleep(60)\n",
                        "timeout"),
    "patched builtins fake the asserts": (GOOD.replace("a + b", "a - b") +
                                          "import builtins\nbuiltins.AssertionError = type('X', (Exception,), {})\n",
                                          "failed"),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_program_is_contained(name):
    program, expected = HOSTILE[name]
    result = run(program, TESTS if "add" in program else "", FAST)
    assert result.status in expected.split("|"), (name, result)
    assert_next_program_scores()


def test_files_outside_its_directory_are_out_of_reach(tmp_path):
    victim = tmp_path / "keep.txt"
    victim.write_text("precious")
    program = f"import os\nopen({str(tmp_path / 'new.txt')!r}, 'w').write('x')\n"
    assert run(program, "", FAST).status == "error"
    assert run(f"import os\nos.remove({str(victim)!r})\n", "", FAST).status == "error"
    assert victim.read_text() == "precious" and not (tmp_path / "new.txt").exists()
    assert_next_program_scores()


def test_files_left_in_shared_temporary_directories_are_removed():
    if os.geteuid() != 0:
        pytest.skip("unprivileged, the sandbox runs as this user and cannot tell its files from ours")
    drop = f"/tmp/codelm-sandbox-leftover-{os.getpid()}"
    program = f"import os\nos.makedirs({drop!r} + '/deep')\nopen({drop!r} + '/deep/x', 'w').write('x')\n"
    with Sandbox(workers=1, limits=FAST) as box:
        assert box.run(program).status == "passed"
        assert not os.path.exists(drop)
        assert box.run(f"import os\nassert not os.path.exists({drop!r})\n").status == "passed"


def test_no_network_and_no_secrets(listening_port, monkeypatch):
    connect = f"import socket\nsocket.create_connection(('127.0.0.1', {listening_port}), timeout=2)\n"
    result = run(connect, "", FAST)
    assert result.status == "error" and result.isolation in ("namespaces", "socket-guard"), result
    monkeypatch.setenv("CODELM_TEST_SECRET", "hunter2")
    leak = run("import os\nprint(os.environ.get('CODELM_TEST_SECRET'))\n"
               "print(open(f'/proc/{os.getppid()}/environ').read() if os.getppid() > 1 else '')\n", "", FAST)
    assert "hunter2" not in leak.stdout + leak.stderr
    assert_next_program_scores()


def test_a_daemon_does_not_outlive_the_program(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("unprivileged, there is no sandbox user to sweep: a daemon that calls setsid() escapes")
    marker = "/tmp/codelm-sandbox-daemon-" + str(os.getpid())
    daemon = ("import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(3)\n"
              f"    open({marker!r}, 'w').write('alive')\n")
    assert run(daemon, "", FAST).status == "passed"
    import time

    time.sleep(4)
    assert not os.path.exists(marker)


def test_parallel_runs_keep_their_order_and_the_cli_runs_one(tmp_path):
    results = run_many([(GOOD, TESTS), ("while True: pass", ""), (GOOD.replace("+", "*"), TESTS), (GOOD, TESTS)],
                       Limits(cpu_seconds=2, wall_seconds=5))
    assert [r.status for r in results] == ["passed", "timeout", "failed", "passed"]
    (tmp_path / "p.py").write_text(GOOD)
    (tmp_path / "t.py").write_text(TESTS)
    ok = run_codelm("sandbox", "run", tmp_path / "p.py", "--tests", tmp_path / "t.py")
    assert '"status": "passed"' in ok.stdout
    bad = run_codelm("sandbox", "run", "-", input="import os\nos._exit(0)\n", check=False)
    assert bad.returncode == 1 and '"status": "failed"' in bad.stdout
    missing = run_codelm("sandbox", "run", tmp_path / "p.py", "--tests", tmp_path / "nope.py", check=False)
    assert missing.returncode == 2 and "file not found" in missing.stderr


@pytest.mark.slow
def test_warm_slots_are_clean_between_jobs_and_replaced_when_they_die(tmp_path):
    """One supervisor serves many jobs: what a job leaves running is killed before the next starts, a fork
    bomb in one slot does not starve another (each slot has its own user), and a dead supervisor is restarted."""
    marker = f"/tmp/codelm-sandbox-pooled-daemon-{os.getpid()}"
    daemon = ("import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(2)\n"
              f"    open({marker!r}, 'w').write('alive')\n")
    bomb = HOSTILE["fork bomb"][0]
    with Sandbox(workers=2, limits=Limits(cpu_seconds=3, wall_seconds=4, memory_mb=512)) as box:
        assert len({slot.uid for slot in box.slots}) == 2
        results = box.run_many([(bomb, ""), (daemon, ""), *[(GOOD, TESTS)] * 6])
        assert [r.status for r in results[1:]] == ["passed"] * 7, results
        time.sleep(3)
        if os.geteuid() == 0:  # unprivileged, a daemon that calls setsid() escapes the process-group kill
            assert not os.path.exists(marker)
        box.slots[0].proc.kill()
        box.slots[0].proc.wait()
        assert [r.status for r in box.run_many([(GOOD, TESTS)] * 4)] == ["passed"] * 4
