"""The child side of codelm.eval.sandbox: a trusted supervisor and the untrusted worker it forks.

Run as `python -I harness.py WORKDIR`; it imports nothing from codelm. The
supervisor (PID 1 of the sandbox's PID namespace when there is one) forks the
worker, which drops privileges, sets limits and runs the program and tests,
and judges it by its wait status and by result.json, trusted only if it holds
this run's token (read from config.json, deleted before untrusted code runs).
The verdict is the supervisor's one line of stdout, which the worker cannot reach.
"""

import builtins
import json
import os
import resource
import signal
import sys
import traceback


def drop_privileges():
    if os.geteuid() != 0:
        return
    import pwd

    nobody = pwd.getpwnam("nobody")
    os.setgroups([])
    os.setgid(nobody.pw_gid)
    os.setuid(nobody.pw_uid)


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


def run_untrusted(config: dict):
    """The worker: unprivileged and limited; runs program then tests; leaves result.json with the token."""
    token = config["token"]
    for name, fd in (("stdout.txt", 1), ("stderr.txt", 2)):
        os.dup2(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), fd)
    with open("program.py") as f:
        program = f.read()
    with open("tests.py") as f:
        tests = f.read()
    drop_privileges()
    set_limits(config["limits"])
    if config["socket_guard"]:
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


def verdict(wait_status: int, token: str, cpu_seconds: int) -> dict:
    """How the worker ended: its own report only if it carries the token, else its exit or signal."""
    if os.WIFSIGNALED(wait_status):
        sig = os.WTERMSIG(wait_status)
        name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else str(sig)
        if sig == signal.SIGXCPU or (sig == signal.SIGKILL and _children_cpu() >= cpu_seconds):
            return {"status": "timeout", "detail": f"CPU-time limit ({name})"}
        return {"status": "killed", "detail": f"signal {name}"}
    try:
        with open("result.json") as f:
            report = json.loads(f.read(100_000))
    except (OSError, ValueError):
        report = {}
    if isinstance(report, dict) and report.get("token") == token:
        return {"status": report["status"], "detail": str(report.get("detail", ""))[:1000]}
    return {"status": "failed", "detail": f"exited with status {os.WEXITSTATUS(wait_status)} before the tests finished"}


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main():
    """The supervisor: trusted, keeps its privileges, forks the worker and prints the verdict as JSON."""
    os.chdir(sys.argv[1])
    with open("config.json") as f:
        config = json.load(f)
    os.remove("config.json")
    sys.stdout.flush()
    pid = os.fork()
    if pid == 0:
        try:
            run_untrusted(config)
        finally:
            os._exit(4)
    _, status = os.waitpid(pid, 0)
    print(json.dumps(verdict(status, config["token"], config["limits"]["cpu_seconds"])), flush=True)


if __name__ == "__main__":
    main()
