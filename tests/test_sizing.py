"""The speedrun sizes its model for the machine: the rule on injected throughputs, and the whole speedrun once."""

import json

import pytest
import torch
from conftest import run_codelm

from codelm.config import load_config
from codelm.speedrun import DEFAULT_CONFIG
from codelm.train import sizing

CPU = torch.device("cpu")


def plan_with(monkeypatch, tokens_per_second: dict[str, float], minutes: float = 10.0):
    monkeypatch.setattr(
        sizing,
        "step_tokens_per_second",
        lambda model_cfg, cfg, device, precision: tokens_per_second[f"{model_cfg.n_layers}x{model_cfg.dim}"],
    )
    return sizing.plan_shape(
        load_config(DEFAULT_CONFIG), CPU, "fp32", budget_seconds=minutes * 60, log=lambda *a, **k: None
    )


def test_a_faster_machine_gets_a_bigger_model(monkeypatch):
    slow = {"4x96": 2500.0, "4x128": 2000.0, "4x192": 1500.0, "4x256": 1000.0, "6x384": 300.0}
    fast = {name: 4 * tok_s for name, tok_s in slow.items()}
    small, candidates = plan_with(monkeypatch, slow)
    big, _ = plan_with(monkeypatch, fast)
    assert [c.shape.name for c in candidates] == ["4x96", "4x128", "4x192", "4x256", "6x384"]
    assert sizing.LADDER.index(big) > sizing.LADDER.index(small)
    for shape, table in ((small, slow), (big, fast)):  # the rule: the largest shape with enough tokens per parameter
        _, candidates = plan_with(monkeypatch, table)
        fits = [c.budget_tokens >= sizing.TOKENS_PER_PARAM * c.params for c in candidates]
        assert fits[sizing.LADDER.index(shape)]
        assert not any(fits[sizing.LADDER.index(shape) + 1 :])


def test_too_slow_for_any_shape_still_trains_the_smallest(monkeypatch):
    shape, _ = plan_with(monkeypatch, {"4x96": 1.0, "4x128": 1.0, "4x192": 1.0, "4x256": 1.0, "6x384": 1.0})
    assert shape == sizing.LADDER[0]


def test_a_step_budget_needs_no_timing(monkeypatch):
    def no_timing(*args):
        raise AssertionError("timed a shape")

    monkeypatch.setattr(sizing, "step_tokens_per_second", no_timing)
    cfg = load_config(DEFAULT_CONFIG)
    shape, candidates = sizing.plan_shape(cfg, CPU, "fp32", budget_steps=100_000)
    assert shape == sizing.LADDER[-1] and candidates[0].budget_tokens == 100_000 * cfg.train.batch_tokens


@pytest.mark.slow
def test_speedrun_on_a_small_corpus_sizes_its_model_and_reports_compressors(tmp_path, corpus_paths):
    out = tmp_path / "run"
    proc = run_codelm(
        "speedrun",
        "--data",
        corpus_paths[1],
        "--max-steps",
        "5",
        "--out",
        out,
        "--vocab-size",
        "1024",
        "--set",
        "train.eval_every=0",
    )
    plan = json.loads((out / "plan.json").read_text())
    assert plan["shape"] == "4x96"  # 5 steps of 4096 tokens fit only the smallest shape
    assert "n_layers = 4" in (out / "config.toml").read_text() and "dim = 96" in (out / "config.toml").read_text()
    report = (out / "report.md").read_text()
    assert "gzip -9 on the same validation text" in report and "xz -9e on the same validation text" in report
    assert "## Machine and model size" in report and "**chosen**" in report
    assert "datatrove" not in proc.stderr + proc.stdout  # its banners and tables went to the run's log files
    assert list((out / "data" / "curated" / "logs").glob("*/logs/task_*.log"))
    summary = json.loads((out / "summary.json").read_text())
    assert 0 < summary["compression"]["xz"] < summary["compression"]["gzip"] < 8
