"""`codelm rl` end to end on the procedural tasks: a model that learned from noisy code (conftest's
noisy_arithmetic_model, right about half the time) learns from its tests."""

import json
import shutil

import pytest
from conftest import REPO, run_codelm

from codelm.tasks import procedural

TASKS = "procedural:400:1:0"  # what RL trains on and holds out from; the fixture learned from seed 1's


def rl_args(ckpt, out, *settings):
    return ["rl", "--init-from", ckpt, "--tasks", TASKS, "--out", out, "--set", "train.precision='fp32'",
            "--set", "train.compile=false", "--set", "optim.lr=5e-4", "--set", "rl.max_new_tokens=24",
            "--set", "rl.held_out=0.15", "--set", "rl.workers=2", *[a for s in settings for a in ("--set", s)]]


@pytest.mark.slow
def test_rl_raises_the_held_out_pass_rate(noisy_arithmetic_model, tmp_path):
    afters = []
    for seed in (0, 1):
        out = tmp_path / f"seed{seed}"
        run_codelm(*rl_args(noisy_arithmetic_model, out, "train.max_steps=40", f"train.seed={seed}"))
        report = json.loads((out / "rl.json").read_text())
        afters.append(report["after"]["pass_rate"])
        before = report["before"]["pass_rate"]
        records = [json.loads(line) for line in (out / "rollouts.jsonl").read_text().splitlines()]
        assert len(records) == 40 and all(sum(r["outcomes"].values()) == 32 for r in records)
        audit = (out / "reward_audit.jsonl").read_text().splitlines()
        assert len(audit) == 40 * 32 and {"task_id", "outcome", "completion"} <= json.loads(audit[0]).keys()
        assert (out / "rewards.png").stat().st_size > 0
    noise = abs(afters[0] - afters[1])
    print(f"held-out greedy pass@1: before {before:.2f}, after {afters} (seed-to-seed {noise:.2f})")
    assert min(afters) - before > max(0.2, 3 * noise), (before, afters)


@pytest.mark.slow
def test_rl_resumes_exactly(noisy_arithmetic_model, tmp_path):
    """Stopped after step 3, between the two updates on rollout 2: the resumed run replays that rollout from
    its saved rows and then samples rollout 3 from the same weights, so every loss matches."""
    settings = ["train.max_steps=5", "rl.updates_per_rollout=2", "rl.held_out=0.0", "train.ckpt_every=3",
                "rl.prompts_per_step=4"]
    whole = tmp_path / "whole"
    run_codelm(*rl_args(noisy_arithmetic_model, whole, *settings))
    resumed = tmp_path / "resumed"
    shutil.copytree(whole, resumed)
    shutil.rmtree(resumed / "checkpoints" / "step_000005")
    (resumed / "checkpoints" / "latest").write_text("step_000003")
    run_codelm(*rl_args(noisy_arithmetic_model, resumed, *settings), "--resume")

    def records(run, name):
        return [json.loads(line) for line in (run / name).read_text().splitlines()]

    assert [r["loss"] for r in records(resumed, "metrics.jsonl") if "loss" in r] == [
        r["loss"] for r in records(whole, "metrics.jsonl") if "loss" in r]
    assert len(records(whole, "rollouts.jsonl")) == 3 and records(resumed, "rollouts.jsonl") == records(
        whole, "rollouts.jsonl")


def test_bad_rl_input_is_one_line_and_status_2(noisy_arithmetic_model, tmp_path):
    bad = tmp_path / "bad.jsonl"
    (task,) = procedural.generate(1)
    bad.write_text(json.dumps({**task, "test": task["test"].replace("== ", "== 1 + ", 1)}) + "\n")
    cases = [(["--tasks", str(bad)], "its tests do not pass against its own reference solution"),
             (["--set", "rl.max_new_tokens=200"], "exceeds the model's context of 128"),
             (["--chat", "--set", "rl.samples=1"], "rl.samples: at least 2"),  # --chat: a bool option parses
             (["--set", "rl.advantage='ppo'"], "'rl.advantage' must be one of")]
    for extra, message in cases:
        proc = run_codelm("rl", "--init-from", noisy_arithmetic_model, "--tasks", "procedural:20", "--out",
                          tmp_path / "out", *extra, check=False, cwd=REPO)
        assert proc.returncode == 2 and message in proc.stderr, (extra, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
