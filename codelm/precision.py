"""Precision chosen by measurement, and the matmul peak that MFU is measured against.

Whether bf16 pays depends on the chip, not on the code: with AMX a CPU runs bf16
matmuls several times faster than fp32; an AVX2-only CPU runs them far slower
(docs/results/speedrun.md has the probes' figures). So `precision = "auto"` times the model's own hot step (a training
micro-step, or a decode step) in each precision the device supports and takes
the fastest. Timings are cached per machine, torch version and shape under
~/.cache/codelm (or $CODELM_CACHE_DIR), so the probe costs seconds once.

An explicit choice is obeyed, with a one-line warning when the probe shows it
is more than 2x slower than the best.
"""

import contextlib
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from codelm.errors import UserError
from codelm.io import atomic_write_json, atomic_write_text

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "fp64": torch.float64}
SLOW_FACTOR = 2.0  # an explicit precision this much slower than the best one gets a warning
PROBE_SECONDS = 0.5  # timing budget per candidate, after one warm-up call
# Candidates are timed in turn, this many times, and each keeps its best: a stall of the machine (another
# process taking the cores) during one candidate's turn then cannot decide the choice, which is cached for good.
PROBE_ROUNDS = 2


@dataclass
class PrecisionChoice:
    """What ran, and why: `timings` are seconds per probe step of every candidate tried."""

    precision: str
    requested: str
    timings: dict[str, float] = field(default_factory=dict)
    cached: bool = False
    peak_flops: float | None = None  # training: the matmul peak of `precision` that MFU is measured against

    def save(self, path: Path):
        """A run's precision.json, which the report reads back."""
        atomic_write_json(path, asdict(self))

    @classmethod
    def load(cls, path: Path) -> "PrecisionChoice":
        return cls(**json.loads(Path(path).read_text()))

    def describe(self) -> str:
        if not self.timings:
            return f"precision {self.precision} (as configured)"
        times = ", ".join(f"{name} {1000 * t:.1f} ms" for name, t in sorted(self.timings.items(), key=lambda kv: kv[1]))
        how = "fastest" if self.requested == "auto" else "as configured"
        return f"precision {self.precision} ({how}; probe step {times}{', cached' if self.cached else ''})"


def cache_dir() -> Path:
    root = (
        os.environ.get("CODELM_CACHE_DIR") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "codelm"
    )
    return Path(root)


def device_name(device: torch.device) -> str:
    """A name that changes when the hardware does: the GPU model, or the CPU model and thread count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return f"{cpu} x{torch.get_num_threads()}"


def machine_profile(device: torch.device) -> str:
    """One line for reports: the device, and for a CPU the matrix extensions that decide bf16's speed."""
    if device.type == "cuda":
        return device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            flags = set(next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), []))
    except OSError:
        flags = set()
    if "amx_bf16" in flags:
        kind = "AMX (fast bf16)"
    elif "avx512_bf16" in flags:
        kind = "AVX-512 BF16"
    elif "avx2" in flags:
        kind = "AVX2, no AMX (slow bf16)"
    else:
        kind = "no AVX2 flags seen"
    return f"{device_name(device)} threads, {kind}"


def candidates(device: torch.device, training: bool = False) -> list[str]:
    """Precisions worth timing on this device, in order of preference on a tie.

    Training never uses fp16: without loss scaling its gradients underflow."""
    if device.type == "cuda":
        names = ["bf16", "fp16", "fp32"] if torch.cuda.is_bf16_supported() else ["fp16", "fp32"]
    else:
        names = ["bf16", "fp32"]
    return [n for n in names if not (training and n == "fp16")]


def autocast_context(device: torch.device, precision: str):
    """Mixed precision over fp32 master weights for bf16/fp16; nothing for fp32."""
    if precision in ("bf16", "fp16"):
        return torch.autocast(device.type, dtype=DTYPES[precision])
    return contextlib.nullcontext()


def _synchronize(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_step(step: Callable[[], object], device: torch.device, seconds: float = PROBE_SECONDS) -> float:
    """Seconds per call: the best of repeated calls within `seconds` (at least one), after one warm-up call.

    The warm-up absorbs one-time costs (kernel selection, allocation). Only a warm-up
    that alone takes 4x the budget is the measurement: a kernel that slow has lost
    already, and repeating it would only waste the user's time."""
    start = time.perf_counter()
    step()
    _synchronize(device)
    first = time.perf_counter() - start
    if first > 4 * seconds:
        return first
    best, deadline = float("inf"), time.perf_counter() + seconds
    for _ in range(100):
        start = time.perf_counter()
        step()
        _synchronize(device)
        best = min(best, time.perf_counter() - start)
        if time.perf_counter() > deadline:
            break
    return best


def _load_cache(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}  # missing or corrupt: measure again


def _store_cache(path: Path, key: str, value):
    entries = _load_cache(path)
    entries[key] = value
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(entries, indent=1, sort_keys=True))


def others_running() -> int:
    """Threads of other processes runnable right now (the median of a few reads of Linux's /proc/loadavg; 0
    where it does not exist): a measurement taken while they compete for the cores times the competition."""
    counts = []
    for _ in range(5):
        try:
            counts.append(int(Path("/proc/loadavg").read_text().split()[3].split("/")[0]) - 1)  # less ourselves
        except (OSError, ValueError, IndexError):
            return 0
        time.sleep(0.02)
    return sorted(counts)[len(counts) // 2]


def cached_measurement(kind: str, device: torch.device, shape: str, measure: Callable[[], object]):
    """measure() once per (kind, machine, torch version, shape); later calls read the cache. Returns (value, cached).

    The measurement runs on a forked random state: whether a probe ran (or was cached)
    never changes a run's initial weights or data order."""
    path = cache_dir() / "probes.json"
    key = f"{kind}|{device_name(device)}|torch {torch.__version__}|{shape}"
    entries = _load_cache(path)
    if key in entries:
        return entries[key], True
    busy = device.type == "cpu" and others_running() >= (os.cpu_count() or 1)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        value = measure()
    if busy:  # this run goes by it; a later one on a quiet machine measures again
        print(
            "note: other processes were using the cores during this measurement, so it is not cached",
            file=sys.stderr,
            flush=True,
        )  # stderr: `codelm generate` prints its text on stdout
        return value, False
    try:
        _store_cache(path, key, value)
    except OSError:
        pass  # a read-only home still trains; it just probes again next time
    return value, False


def choose_precision(
    requested: str,
    device: torch.device,
    kind: str,
    shape: str,
    make_step: Callable[[str], Callable[[], object]],
    training: bool = False,
    log=print,
) -> PrecisionChoice:
    """Resolve `requested` ("auto" or a name) for a hot step; make_step(precision) returns that step, ready to time.

    fp32 asked for explicitly is never probed: it is the reference every device runs."""
    if requested not in ("auto", *DTYPES):
        raise UserError(f"precision must be 'auto' or one of {', '.join(DTYPES)}; got {requested!r}")
    if requested in ("fp32", "fp64"):
        return PrecisionChoice(requested, requested)
    names = candidates(device, training)
    if requested != "auto" and requested not in names:
        raise UserError(f"precision {requested!r} is not supported on {device_name(device)} (try: {', '.join(names)})")

    def measure() -> dict[str, float]:
        log(f"probing precision on {device_name(device)} ({kind}: {', '.join(names)}; once per machine)...")
        steps = {name: make_step(name) for name in names}
        best = dict.fromkeys(names, float("inf"))
        for _ in range(PROBE_ROUNDS):
            for name in names:
                best[name] = min(best[name], time_step(steps[name], device))
        return best

    timings, cached = cached_measurement(f"precision-{kind}", device, shape, measure)
    best = min(names, key=lambda name: timings[name])  # names are in preference order: ties go to the first
    chosen = best if requested == "auto" else requested
    choice = PrecisionChoice(chosen, requested, timings, cached)
    if timings[chosen] > SLOW_FACTOR * timings[best]:
        print(
            f"warning: {chosen} is {timings[chosen] / timings[best]:.0f}x slower than {best} on this machine "
            f'({device_name(device)}); precision = "auto" would pick {best}',
            file=sys.stderr,
            flush=True,
        )
    return choice


def measure_peak_flops(device: torch.device, precision: str = "fp32", seconds: float = 1.0) -> float:
    """Best FLOP/s of square matmuls in `precision`: the denominator of MFU on hardware without a spec sheet.

    Each size is timed through both `a @ b` and `F.linear` (what the model's layers call): on CPUs
    without native bf16 the two reach different kernels, about 1 against 10 GFLOP/s on AVX2, and a
    peak below what the layers run at puts MFU above 100%. Sizes grow from 256 while the next one is
    predicted to fit the budget, so a slow kernel costs well under `seconds` instead of a minute."""
    dtype = DTYPES[precision]
    best, size, deadline = 0.0, 256, time.perf_counter() + seconds
    while True:
        a = torch.randn(size, size, dtype=dtype, device=device)
        b = torch.randn(size, size, dtype=dtype, device=device)
        per_call = min(
            time_step(step, device, seconds=min(0.1, seconds / 8)) for step in (lambda: a @ b, lambda: F.linear(a, b))
        )
        best = max(best, 2 * size**3 / per_call)
        predicted = per_call * 8 * 2 * 2  # next size: 8x the work, warm-up plus one timed call, two kernels
        if size >= 4096 or time.perf_counter() + predicted > deadline:
            return best
        size *= 2


def peak_flops(device: torch.device, precision: str) -> float:
    """measure_peak_flops, cached like the precision probe."""
    # the shape names the method, so peaks cached by the matmul-only probe are measured again
    value, _ = cached_measurement(
        "peak-flops", device, f"{precision} matmul+linear", lambda: measure_peak_flops(device, precision)
    )
    return float(value)
