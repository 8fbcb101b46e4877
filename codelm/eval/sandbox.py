"""Run untrusted Python (generated code plus its tests) in a child process that cannot hurt the evaluator.

Layers, outermost first:
- `unshare --net --pid --fork --kill-child` when running as root and the kernel
  allows it: no network but an unconfigured loopback, and a PID namespace whose
  init is the harness, so when it exits every process it left behind (daemons,
  fork bombs) is killed by the kernel. Otherwise ("socket-guard" mode) socket
  creation is disabled inside the child and the process group is killed.
- The harness drops root for `nobody`, so file permissions and RLIMIT_NPROC bind
  (root ignores RLIMIT_NPROC), then sets CPU, address-space, file-size, open-file
  and process limits, and runs in a fresh temporary directory that is deleted
  afterwards, with a scrubbed environment. stdout/stderr go to files there,
  capped by the file-size limit.
- The evaluator enforces a wall-clock timeout by killing the whole group.
- Inside, a trusted supervisor forks the worker and judges it by its wait status
  and a result file that only a test run reaching its end writes with the run's
  secret token: sys.exit(0) or os._exit(0) before the tests counts as failed.
  Builtins are restored from a snapshot between the program and the tests.

`run(program, tests, limits)` returns a `Result`; it is also the RL reward source.
"""

import functools
import json
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from codelm.errors import UserError

HARNESS = Path(__file__).with_name("sandbox_harness.py")


@dataclass
class Limits:
    cpu_seconds: int = 10
    wall_seconds: float = 15.0
    memory_mb: int = 1024  # address space
    file_size_mb: int = 16  # any one file, stdout and stderr included
    open_files: int = 64
    processes: int = 64  # per sandbox user (nobody); the PID namespace confines them too
    output_chars: int = 4096  # captured stdout/stderr kept in the result


@dataclass
class Result:
    status: str  # passed | failed | error | timeout | killed
    detail: str = ""  # exception type and message excerpt, or the signal
    stdout: str = ""
    stderr: str = ""
    seconds: float = 0.0
    isolation: str = ""  # "namespaces" or "socket-guard"


def isolation_mode() -> str:
    """Namespaces when we are root and `unshare` works here, else the in-process socket guard."""
    if os.geteuid() == 0 and shutil.which("unshare"):
        probe = subprocess.run(["unshare", "--net", "--pid", "--fork", "--kill-child", "true"], capture_output=True)
        if probe.returncode == 0:
            return "namespaces"
    return "socket-guard"


def sandbox_python() -> str:
    """An interpreter the unprivileged user can run with its whole standard library.

    This interpreter first; as root, its stdlib may sit in a directory only root can
    read (pyenv under /root), and then the system python3 is used."""
    candidates = [sys.executable, "/usr/bin/python3"]
    if os.geteuid() != 0:
        return sys.executable
    nobody = pwd.getpwnam("nobody")
    for python in candidates:
        try:
            probe = subprocess.run([python, "-I", "-c", "import ctypes, json, signal, socket"], capture_output=True,
                                   user=nobody.pw_uid, group=nobody.pw_gid, extra_groups=[], cwd="/")
        except OSError:  # not even executable for that user
            continue
        if probe.returncode == 0:
            return python
    raise UserError(f"no Python interpreter the sandbox user 'nobody' can run (tried {candidates})")


@functools.cache
def environment() -> tuple[str, str]:
    """(isolation mode, interpreter), probed once per process."""
    return isolation_mode(), sandbox_python()


def run(program: str, tests: str = "", limits: Limits | None = None) -> Result:
    """Execute program, then tests, in a fresh sandbox; passed only if the tests ran to the end."""
    limits = limits or Limits()
    mode, python = environment()
    workdir = Path(tempfile.mkdtemp(prefix="codelm-sandbox-"))
    try:
        (workdir / "program.py").write_text(program)
        (workdir / "tests.py").write_text(tests)
        config = {"limits": limits.__dict__, "token": secrets.token_hex(16), "socket_guard": mode == "socket-guard"}
        (workdir / "config.json").write_text(json.dumps(config))
        if os.geteuid() == 0:
            nobody = pwd.getpwnam("nobody")
            os.chown(workdir, nobody.pw_uid, nobody.pw_gid)
        command = [python, "-I", "-B", str(HARNESS), str(workdir)]
        if mode == "namespaces":
            command = ["unshare", "--net", "--pid", "--fork", "--kill-child", "--", *command]
        env = {"PATH": "/usr/bin:/bin", "HOME": str(workdir), "LANG": "C.UTF-8"}
        start = time.perf_counter()
        proc = subprocess.Popen(command, cwd=workdir, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            verdict_line, _ = proc.communicate(timeout=limits.wall_seconds)
        except subprocess.TimeoutExpired:
            verdict_line = None
        _kill_group(proc.pid)  # also whatever the program left running in its group
        proc.wait()
        seconds = time.perf_counter() - start
        out, err = (_read_capped(workdir / name, limits.output_chars) for name in ("stdout.txt", "stderr.txt"))
        result = Result("timeout", f"wall-clock limit of {limits.wall_seconds:g} s", out, err, seconds, mode)
        if verdict_line is not None:
            try:
                verdict = json.loads(verdict_line.decode().strip().splitlines()[-1])
                result.status, result.detail = verdict["status"], verdict["detail"]
            except (ValueError, IndexError, KeyError):
                result.status, result.detail = "error", f"sandbox supervisor failed (exit {proc.returncode})"
        return result
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def run_many(jobs: list[tuple[str, str]], limits: Limits | None = None, workers: int = 0) -> list[Result]:
    """(program, tests) pairs run in parallel sandboxes (default: one per core); results in input order."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
        return list(pool.map(lambda job: run(job[0], job[1], limits), jobs))


def _kill_group(pgid: int):
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _read_capped(path: Path, chars: int) -> str:
    try:
        with open(path, "rb") as f:
            return f.read(chars * 4).decode("utf-8", "replace")[:chars]
    except OSError:
        return ""
