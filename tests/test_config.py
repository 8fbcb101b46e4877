"""Configs: TOML + overrides, strict keys and types, the resolved file loads back; LR schedules."""

import math

import pytest
from conftest import REPO

from codelm.config import OptimConfig, load_config, to_toml
from codelm.errors import UserError
from codelm.train.loop import budget_steps, decay_start, learning_rate

TINY = REPO / "codelm" / "configs" / "tiny.toml"


def test_overrides_are_typed_and_nested(tmp_path):
    cfg = load_config(TINY, ["model.n_layers=3", "optim.lr=1", "train.out_dir=runs/x", "train.compile=true"])
    assert cfg.model.n_layers == 3
    assert cfg.optim.lr == 1.0 and isinstance(cfg.optim.lr, float)  # an int is accepted where a float is expected
    assert cfg.train.out_dir == "runs/x" and cfg.train.compile is True


@pytest.mark.parametrize("override, message", [
    ("model.depth=3", "unknown config key 'model.depth'"),
    ("modle.dim=3", "unknown config key 'modle'"),
    ("model.dim=wide", "'model.dim' expects int, got str"),
    ("train.max_steps=true", "'train.max_steps' expects int, got bool"),
    ("train.compile=1", "'train.compile' expects bool"),
    ("model=3", "'model' is a section"),
    ("optim.schedule='linear'", "'optim.schedule' must be one of cosine, wsd"),
    ("model.n_kv_heads=4", "not divisible"),
    ("no-equals-sign", "--set expects section.key=value"),
])
def test_bad_overrides_name_the_problem(override, message):
    with pytest.raises(UserError, match=message):
        load_config(TINY, [override])


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(TINY, ["optim.lr=0.01", "train.out_dir='a \"quoted\" dir'"])
    path = tmp_path / "resolved.toml"
    path.write_text(to_toml(cfg))
    assert load_config(path) == cfg


def test_missing_config_file():
    with pytest.raises(UserError, match="config file not found"):
        load_config(REPO / "codelm" / "configs" / "nope.toml")


def test_cosine_schedule_warms_up_then_decays_to_the_floor():
    o = OptimConfig(lr=1.0, warmup_steps=10, schedule="cosine", min_lr_ratio=0.1)
    lrs = [learning_rate(s, 100, o) for s in range(100)]
    assert lrs[:10] == pytest.approx([(s + 1) / 10 for s in range(10)])
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert lrs[55] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 45 / 90)))
    assert learning_rate(100, 100, o) == pytest.approx(0.1)


def test_wsd_schedule_is_flat_then_decays_linearly_to_the_floor():
    o = OptimConfig(lr=2.0, warmup_steps=5, schedule="wsd", decay_frac=0.2, min_lr_ratio=0.0)
    lrs = [learning_rate(s, 100, o) for s in range(100)]
    assert lrs[5:80] == [2.0] * 75
    assert lrs[80] < 2.0 and lrs[-1] == pytest.approx(0.0)
    assert all(a > b for a, b in zip(lrs[80:], lrs[81:]))


def test_a_time_budget_replanned_mid_run_never_moves_the_decay_behind_the_current_step():
    o = OptimConfig(lr=1.0, warmup_steps=5, schedule="wsd", decay_frac=0.4)
    assert budget_steps(30, seconds_left=100.0, per_step=0.5, o=o) == 230  # slower or faster steps: shorter or longer
    assert budget_steps(30, seconds_left=50.0, per_step=0.5, o=o) == 130
    late = budget_steps(90, seconds_left=1.0, per_step=0.5, o=o)  # the steps got much slower at step 90
    assert late == 150 and decay_start(late, o) == 90  # the decay starts now, it does not jump ahead
    assert learning_rate(89, late, o) == 1.0 and learning_rate(90, late, o) < 1.0
    cosine = OptimConfig(lr=1.0, warmup_steps=5, schedule="cosine")
    assert decay_start(1000, cosine) == 5  # cosine decays from the end of warmup: no re-planning after it
