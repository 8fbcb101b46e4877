"""The child side of codelm.sandbox.supervisor: a trusted supervisor that forks one untrusted worker per job.

Run as `python -I harness.py UID SOCKET_GUARD`; it imports nothing from codelm.
The supervisor (PID 1 of the sandbox's PID namespace when there is one) reads
one job per line on stdin (a working directory and limits), forks a worker,
waits for it under the wall-clock limit, then kills every process left running
as the sandbox's user (the worker's children, daemons, fork-bomb survivors) and
deletes the files that user left in /tmp, /var/tmp and /dev/shm. It
judges the worker by its wait status and by result.json, trusted only if it
holds the job's secret token, and answers one JSON line on stdout. The worker
cannot reach either pipe.

Forking a warm interpreter instead of starting one per program is what makes
this fast; the supervisor itself never runs untrusted code, so nothing carries
over from one job to the next.
"""

import builtins
import json
import os
import resource
import secrets
import select
import signal
import sys
import time
import traceback

WARM_MODULES = ["math", "re", "typing", "collections", "itertools", "functools", "heapq", "string", "hashlib"]
SHARED_WRITABLE = ["/tmp", "/var/tmp", "/dev/shm"]  # where else an unprivileged user can create files


def drop_privileges(uid: int):
    if os.geteuid() != 0:
        return
    os.setgroups([])
    os.setgid(uid)
    os.setuid(uid)


def set_limits(limits: dict):
    mb = 1024 * 1024
    cpu = limits["cpu_seconds"]
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))  # SIGXCPU, then SIGKILL a second later
    for which, value in [
        (resource.RLIMIT_AS, limits["memory_mb"] * mb),
        (resource.RLIMIT_FSIZE, limits["file_size_mb"] * mb),
        (resource.RLIMIT_NOFILE, limits["open_files"]),
        (resource.RLIMIT_NPROC, limits["processes"]),
        (resource.RLIMIT_CORE, 0),
    ]:
        resource.setrlimit(which, (value, value))


def guard_sockets():
    import socket

    def refuse(*args, **kwargs):
        raise PermissionError("network access is disabled in the sandbox")

    socket.socket = refuse
    socket.create_connection = refuse


def run_untrusted(job: dict, token: str, uid: int, socket_guard: bool):
    """The worker: unprivileged and limited; runs program then tests; leaves result.json with the token."""
    os.setpgid(0, 0)
    os.chdir(job["dir"])
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)  # the job pipe is the supervisor's, not the program's
    for name, fd in (("stdout.txt", 1), ("stderr.txt", 2)):
        os.dup2(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), fd)
    os.closerange(3, 1024)
    with open("program.py") as f:
        program = f.read()
    with open("tests.py") as f:
        tests = f.read()
    drop_privileges(uid)
    set_limits(job["limits"])
    if socket_guard:
        guard_sockets()
    builtins_dict = vars(builtins)
    real_builtins = dict(builtins_dict)
    write, dumps, exit_now = os.write, json.dumps, os._exit  # the program may replace module attributes
    streams = (sys.stdout, sys.stderr)
    scope = {"__name__": "__main__"}

    def restore_builtins():
        builtins_dict.clear()
        builtins_dict.update(real_builtins)

    def report(status: str, detail: str = ""):
        restore_builtins()
        for stream in streams:
            try:
                stream.flush()
            except Exception:  # a closed or full stream (the file-size limit) loses its tail
                pass
        fd = os.open("result.json", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        write(fd, dumps({"token": token, "status": status, "detail": detail}).encode())
        exit_now(0)

    try:
        exec(compile(program, "program.py", "exec"), scope)
        restore_builtins()  # the program may have patched builtins to fake the asserts
        exec(compile(tests, "tests.py", "exec"), scope)
    except AssertionError as e:
        report("failed", "AssertionError: " + str(e)[:500])
    except MemoryError:
        report("killed", "MemoryError (address-space limit)")
    except SystemExit as e:  # sys.exit() in the program or the tests: they did not run to the end
        exit_now(e.code if isinstance(e.code, int) and e.code else 3)
    except BaseException as e:
        report("error", "".join(traceback.format_exception_only(type(e), e)).strip()[-500:])
    report("passed")


def verdict(wait_status: int, cpu_used: float, token: str, limits: dict, workdir: str) -> dict:
    """How the worker ended: its own report only if it carries the token, else its exit or signal."""
    if os.WIFSIGNALED(wait_status):
        sig = os.WTERMSIG(wait_status)
        name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else str(sig)
        if sig == signal.SIGXCPU or (sig == signal.SIGKILL and cpu_used >= limits["cpu_seconds"]):
            return {"status": "timeout", "detail": f"CPU-time limit ({name})"}
        return {"status": "killed", "detail": f"signal {name}"}
    try:
        with open(os.path.join(workdir, "result.json")) as f:
            report = json.loads(f.read(100_000))
    except (OSError, ValueError):
        report = {}
    if isinstance(report, dict) and report.get("token") == token:
        return {"status": report["status"], "detail": str(report.get("detail", ""))[:1000]}
    return {"status": "failed", "detail": f"exited with status {os.WEXITSTATUS(wait_status)} before the tests finished"}


def wait_for(pid: int, seconds: float) -> tuple[int, float, bool]:
    """(wait status, CPU seconds, timed out): the worker is killed with its group at the wall-clock limit."""
    pidfd = os.pidfd_open(pid)
    ready, _, _ = select.select([pidfd], [], [], seconds)
    os.close(pidfd)
    if not ready:
        kill_group(pid)
    _, status, usage = os.wait4(pid, 0)
    return status, usage.ru_utime + usage.ru_stime, not ready


def kill_group(pgid: int):
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def sweep(uid: int, worker: int, workdir: str):
    """Kill everything the job left behind, then reap it (orphans come to this process: PID 1 or subreaper).

    As root, a helper becomes the sandbox user and signals every process it may (kill(-1)): that is exactly
    the job's leftovers, since the user is unique to this sandbox; then the files that user left in shared
    writable directories go. Unprivileged, only the worker's group is killed."""
    kill_group(worker)
    if os.geteuid() == 0:
        for _ in range(3):  # a fork bomb may fork between two passes
            helper = os.fork()
            if helper == 0:
                try:
                    os.setgroups([])
                    os.setgid(uid)
                    os.setuid(uid)
                    os.kill(-1, signal.SIGKILL)
                except BaseException:
                    pass
                os._exit(0)
            os.waitpid(helper, 0)
            reap()
        remove_leftovers(uid, workdir)
    reap()


def remove_leftovers(uid: int, workdir: str):
    """Delete what the job created in the world-writable directories (but its own directory, which the
    evaluator reads and deletes): the next job must not find it."""
    import shutil

    workdir = os.path.realpath(workdir)
    for directory in SHARED_WRITABLE:
        try:
            entries = list(os.scandir(os.path.realpath(directory)))
        except OSError:
            continue
        for entry in entries:
            try:
                if entry.stat(follow_symlinks=False).st_uid != uid or entry.path == workdir:
                    continue
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path, ignore_errors=True)
                else:
                    os.unlink(entry.path)
            except OSError:
                pass


def reap():
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def become_subreaper():
    """Orphans of the job are re-parented here (not to the host's init), so the sweep can reap them."""
    import ctypes

    PR_SET_CHILD_SUBREAPER = 36
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def run_job(job: dict, uid: int, socket_guard: bool) -> dict:
    token = secrets.token_hex(16)
    start = time.monotonic()
    sys.stdout.flush()
    pid = os.fork()
    if pid == 0:
        try:
            run_untrusted(job, token, uid, socket_guard)
        finally:
            os._exit(4)
    status, cpu_used, timed_out = wait_for(pid, job["limits"]["wall_seconds"])
    sweep(uid, pid, job["dir"])
    if timed_out:
        result = {"status": "timeout", "detail": f"wall-clock limit of {job['limits']['wall_seconds']:g} s"}
    else:
        result = verdict(status, cpu_used, token, job["limits"], job["dir"])
    return {**result, "seconds": time.monotonic() - start}


def main():
    uid, socket_guard = int(sys.argv[1]), sys.argv[2] == "1"
    os.chdir("/")
    if os.getpid() != 1:
        become_subreaper()
    for name in WARM_MODULES:  # imported once here instead of in every job
        __import__(name)
    for line in sys.stdin:
        if line.strip():
            print(json.dumps(run_job(json.loads(line), uid, socket_guard)), flush=True)


if __name__ == "__main__":
    main()
