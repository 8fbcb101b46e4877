"""Run untrusted Python (generated code plus its tests) in child processes that cannot hurt the evaluator.

Layers, outermost first:
- `unshare --net --pid --fork --kill-child` when running as root and the kernel
  allows it: no network but an unconfigured loopback, and a PID namespace whose
  init is the supervisor, so when it exits every process left inside dies with
  it. Otherwise ("socket-guard" mode) socket creation is disabled in the worker.
- A trusted supervisor per sandbox slot (harness.py) forks one worker
  per job. The worker drops root for a user id unique to its slot, so file
  permissions and RLIMIT_NPROC bind (root ignores RLIMIT_NPROC) and one slot's
  fork bomb cannot starve another; sets CPU, address-space, file-size,
  open-file and process limits; runs in a fresh temporary directory (deleted
  afterwards) with a scrubbed environment; stdout/stderr go to files there,
  capped by the file-size limit.
- The supervisor kills the worker's group at the wall-clock limit, then every
  process still running as the slot's user (daemons, fork-bomb survivors). The
  evaluator restarts a supervisor that stops answering.
- The verdict comes from the worker's wait status and a result file that only a
  test run reaching its end writes with the job's secret token: sys.exit(0) or
  os._exit(0) before the tests counts as failed. Builtins are restored from a
  snapshot between the program and the tests.

`run(program, tests, limits)` returns a `Result`; `Sandbox` keeps slots warm for
many calls (the RL reward source); `run_many` runs a batch in parallel.
"""

import functools
import json
import os
import pwd
import queue
import secrets
import select
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from codelm.config import knob
from codelm.errors import UserError

HARNESS = Path(__file__).with_name("harness.py")


@dataclass
class Limits:
    cpu_seconds: int = knob(10, "CPU time limit in seconds")
    wall_seconds: float = knob(15.0, "wall-clock limit in seconds")
    memory_mb: int = knob(1024, "address space")
    file_size_mb: int = knob(16, "any one file, stdout and stderr included")
    open_files: int = knob(64, "open files at most")
    processes: int = knob(64, "per slot user; the PID namespace confines them too")
    output_chars: int = knob(4096, "captured stdout/stderr kept in the result")


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
    """An interpreter an unprivileged user can run with its whole standard library.

    This interpreter first; as root, its stdlib may sit in a directory only root can
    read (pyenv under /root), and then the system python3 is used."""
    candidates = [sys.executable, "/usr/bin/python3"]
    if os.geteuid() != 0:
        return sys.executable
    nobody = pwd.getpwnam("nobody")
    for python in candidates:
        try:
            probe = subprocess.run([python, "-I", "-c", "import ctypes, json, select, socket"], capture_output=True,
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


SLOT_UIDS = (200_000, 2_000_000)  # slot users: ids no account has, drawn at random so two evaluators never share one
ENV = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}


class Slot:
    """One supervisor process and the unprivileged user its jobs run as."""

    def __init__(self):
        self.mode, self.python = environment()
        self.uid = secrets.SystemRandom().randrange(*SLOT_UIDS) if os.geteuid() == 0 else os.geteuid()
        self.proc = None

    def start(self):
        command = [self.python, "-I", "-B", str(HARNESS), str(self.uid), "1" if self.mode == "socket-guard" else "0"]
        if self.mode == "namespaces":
            command = ["unshare", "--net", "--pid", "--fork", "--kill-child", "--", *command]
        self.proc = subprocess.Popen(command, cwd="/", env=ENV, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, start_new_session=True)

    def stop(self):
        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()
            self.proc = None

    def run(self, program: str, tests: str, limits: Limits) -> Result:
        if self.proc is None or self.proc.poll() is not None:
            self.start()
        workdir = Path(tempfile.mkdtemp(prefix="codelm-sandbox-"))
        try:
            (workdir / "program.py").write_text(program)
            (workdir / "tests.py").write_text(tests)
            if os.geteuid() == 0:
                os.chown(workdir, self.uid, self.uid)
            verdict = self._ask({"dir": str(workdir), "limits": limits.__dict__}, limits.wall_seconds + 10)
            out, err = (_read_capped(workdir / name, limits.output_chars) for name in ("stdout.txt", "stderr.txt"))
            return Result(verdict["status"], verdict["detail"], out, err, verdict.get("seconds", 0.0), self.mode)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)

    def _ask(self, job: dict, seconds: float) -> dict:
        """Send a job, read the verdict; a supervisor that dies or stops answering is replaced."""
        try:
            self.proc.stdin.write((json.dumps(job) + "\n").encode())
            self.proc.stdin.flush()
            ready, _, _ = select.select([self.proc.stdout], [], [], seconds)
            line = self.proc.stdout.readline() if ready else b""
            return json.loads(line)
        except (OSError, ValueError):
            self.stop()
            return {"status": "error", "detail": "sandbox supervisor died or stopped answering; restarted"}


class Sandbox:
    """Warm sandbox slots for many runs: `with Sandbox(workers=2) as box: box.run_many(jobs)`."""

    def __init__(self, workers: int = 0, limits: Limits | None = None):
        self.limits = limits or Limits()
        self.free: queue.Queue[Slot] = queue.Queue()
        self.slots = [Slot() for _ in range(workers or os.cpu_count() or 1)]
        for slot in self.slots:
            self.free.put(slot)

    def run(self, program: str, tests: str = "", limits: Limits | None = None) -> Result:
        slot = self.free.get()
        try:
            return slot.run(program, tests, limits or self.limits)
        finally:
            self.free.put(slot)

    def run_many(self, jobs: list[tuple[str, str]], progress: str | None = None) -> list[Result]:
        """(program, tests) pairs on all slots in parallel; results in input order. `progress`: a bar's name."""
        from concurrent.futures import ThreadPoolExecutor

        from tqdm import tqdm

        with ThreadPoolExecutor(max_workers=len(self.slots)) as pool:
            results = pool.map(lambda job: self.run(*job), jobs)
            return list(tqdm(results, total=len(jobs), desc=progress, unit=" programs", disable=progress is None))

    def close(self):
        for slot in self.slots:
            slot.stop()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def run(program: str, tests: str = "", limits: Limits | None = None) -> Result:
    """Execute program, then tests, in a fresh sandbox; passed only if the tests ran to the end."""
    with Sandbox(workers=1, limits=limits) as box:
        return box.run(program, tests)


def run_many(jobs: list[tuple[str, str]], limits: Limits | None = None, workers: int = 0,
             progress: str | None = None) -> list[Result]:
    """(program, tests) pairs in parallel sandboxes (default: one per core); results in input order."""
    with Sandbox(workers=min(workers or os.cpu_count() or 1, max(len(jobs), 1)), limits=limits) as box:
        return box.run_many(jobs, progress)


def _read_capped(path: Path, chars: int) -> str:
    try:
        with open(path, "rb") as f:
            return f.read(chars * 4).decode("utf-8", "replace")[:chars]
    except OSError:
        return ""
