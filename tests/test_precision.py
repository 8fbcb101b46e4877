"""Precision by measurement: the choice, the warning, the cache, the bounded peak probe, and Muon's update.

Timings are injected: no test here depends on how fast this machine is."""

import json

import pytest
import torch

from codelm import precision
from codelm.errors import UserError
from codelm.train.muon import orthogonalize

CPU = torch.device("cpu")


@pytest.fixture
def fake_clock(monkeypatch, tmp_path):
    """time_step returns what the step returns (its injected seconds); a fresh cache directory per test."""
    monkeypatch.setenv("CODELM_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(precision, "time_step", lambda step, device, seconds=0.0: step())
    calls = []

    def steps(timings: dict[str, float]):
        def make_step(name):
            calls.append(name)
            return lambda: timings[name]
        return make_step

    return steps, calls


def test_auto_picks_fp32_where_bf16_is_slower(fake_clock):
    steps, _ = fake_clock
    choice = precision.choose_precision("auto", CPU, "train", "shape-a", steps({"bf16": 2.5, "fp32": 0.04}))
    assert choice.precision == "fp32" and choice.timings == {"bf16": 2.5, "fp32": 0.04}
    choice = precision.choose_precision("auto", CPU, "train", "shape-b", steps({"bf16": 0.01, "fp32": 0.05}))
    assert choice.precision == "bf16"


def test_a_stall_during_one_turn_of_the_probe_does_not_decide(fake_clock):
    steps, _ = fake_clock
    stalls = iter([0.04, 1.8, 0.04, 0.03])  # bf16, fp32 (the machine busy for a moment), bf16, fp32

    def make_step(name):
        return lambda: next(stalls)

    choice = precision.choose_precision("auto", CPU, "train", "shape-stall", make_step)
    assert choice.precision == "fp32" and choice.timings == {"bf16": 0.04, "fp32": 0.03}


def test_a_probe_taken_while_other_processes_hold_the_cores_is_not_cached(fake_clock, monkeypatch, capsys):
    steps, calls = fake_clock
    monkeypatch.setattr(precision, "others_running", lambda: 8)
    first = precision.choose_precision("auto", CPU, "train", "shape-busy", steps({"bf16": 0.5, "fp32": 2.0}))
    assert first.precision == "bf16" and not first.cached  # this run goes by what it measured
    assert "not cached" in capsys.readouterr().err
    monkeypatch.setattr(precision, "others_running", lambda: 0)
    quiet = precision.choose_precision("auto", CPU, "train", "shape-busy", steps({"bf16": 0.3, "fp32": 0.03}))
    assert quiet.precision == "fp32" and not quiet.cached and len(calls) == 4  # measured again, then cached
    assert precision.choose_precision("auto", CPU, "train", "shape-busy", steps({})).cached


def test_explicit_slow_precision_warns_and_proceeds(fake_clock, capsys):
    steps, _ = fake_clock
    choice = precision.choose_precision("bf16", CPU, "train", "shape", steps({"bf16": 0.9, "fp32": 0.1}))
    assert choice.precision == "bf16"
    warning = capsys.readouterr().err
    assert "warning: bf16 is 9x slower than fp32" in warning and 'precision = "auto" would pick fp32' in warning
    precision.choose_precision("bf16", CPU, "train", "shape2", steps({"bf16": 0.15, "fp32": 0.1}))
    assert "warning" not in capsys.readouterr().err  # 1.5x: within the tolerance


def test_probe_is_cached_per_shape_and_fp32_is_never_probed(fake_clock, tmp_path):
    steps, calls = fake_clock
    first = precision.choose_precision("auto", CPU, "decode", "d64", steps({"bf16": 0.3, "fp32": 0.1}))
    assert not first.cached and sorted(calls) == ["bf16", "fp32"]
    again = precision.choose_precision("auto", CPU, "decode", "d64", steps({"bf16": 0.0, "fp32": 9.0}))
    assert again.cached and again.precision == "fp32" and len(calls) == 2  # the cache answered, nothing ran
    precision.choose_precision("auto", CPU, "decode", "d128", steps({"bf16": 0.3, "fp32": 0.1}))
    assert len(calls) == 4  # another shape is measured anew
    entries = json.loads((tmp_path / "cache" / "probes.json").read_text())
    assert len(entries) == 2 and all(precision.device_name(CPU) in key for key in entries)
    assert precision.choose_precision("fp32", CPU, "decode", "d256", steps({})).timings == {}
    assert len(calls) == 4


def test_a_corrupt_cache_is_measured_again(fake_clock, tmp_path):
    steps, calls = fake_clock
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "probes.json").write_text("{not json")
    assert precision.choose_precision("auto", CPU, "train", "s", steps({"bf16": 1.0, "fp32": 0.5})).precision == "fp32"
    assert len(calls) == 2


def test_unknown_or_unsupported_precision_is_a_user_error(fake_clock):
    steps, _ = fake_clock
    with pytest.raises(UserError, match="precision must be 'auto' or one of"):
        precision.choose_precision("int4", CPU, "train", "s", steps({}))
    with pytest.raises(UserError, match="not supported"):
        precision.choose_precision("fp16", CPU, "train", "s", steps({}))  # CPU training: bf16 or fp32


def test_peak_probe_stops_growing_when_the_kernel_is_slow(monkeypatch):
    sizes = []

    def slow(step, device, seconds=0.0):  # every matmul "takes" 0.3 s: the next size would blow the budget
        sizes.append(1)
        return 0.3

    monkeypatch.setattr(precision, "time_step", slow)
    peak = precision.measure_peak_flops(CPU, "fp32", seconds=1.0)
    assert len(sizes) == 2 and peak == pytest.approx(2 * 256**3 / 0.3)  # one size, through both kernels


def test_peak_probe_keeps_the_faster_of_matmul_and_linear(monkeypatch):
    """bf16 on AVX2: F.linear (the layers' call) runs ~10x faster than `a @ b`; the peak must not miss it."""
    calls = iter([1.0, 0.1])  # `a @ b` slow, F.linear fast

    def timed(step, device, seconds=0.0):
        step()
        return next(calls)

    monkeypatch.setattr(precision, "time_step", timed)
    assert precision.measure_peak_flops(CPU, "fp32", seconds=0.5) == pytest.approx(2 * 256**3 / 0.1)


@pytest.mark.parametrize("shape", [(64, 32), (32, 96), (48, 48)])
def test_orthogonalize_pushes_singular_values_towards_one(shape):
    torch.manual_seed(0)
    g = torch.randn(*shape) * torch.logspace(-1.5, 0, shape[1])  # ill-conditioned, as gradients are
    before = torch.linalg.svdvals(g)
    after = torch.linalg.svdvals(orthogonalize(g))
    assert orthogonalize(g).shape == g.shape
    assert after.max() < 1.3 and after.min() > 0.3, after  # every direction moves at a similar rate
    assert before.max() / before.min() > 5 and after.max() / after.min() < 3  # the quintic aims near 1, not at it
