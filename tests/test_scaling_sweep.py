"""The IsoFLOP sweep: a grid that cannot fit is named, runs train to their budget, finished runs are skipped,
interrupted ones resume, and a cluster gets one `codelm pretrain` command per run."""

import shutil

import pytest
from test_scaling_flops import cli_error

from codelm.cli import main
from codelm.config import load_config
from codelm.scaling.results import read_table

# tiny.toml's training on 64-token rows, 512-token steps, in fp32; checkpoints every 4 steps to resume from
SETTINGS = ["data.seq_len=64", "train.micro_batch=8", "train.batch_tokens=512", "train.precision='fp32'",
            "train.ckpt_every=4", "train.log_every=1000"]


def sweep_args(tokens_dir, out, budgets="3e9,6e9", *extra) -> list[str]:
    args = ["scaling", "sweep", "--tokens", str(tokens_dir), "--out", str(out), "--budgets", budgets,
            "--depths", "1,2,3", "--aspect", "16", "--min-steps", "5", *extra]
    return args + [a for s in SETTINGS for a in ("--train-set", s)]


def test_a_grid_that_cannot_fit_the_budget_is_named(tokens_dir, tmp_path, capsys):
    line = cli_error(capsys, *sweep_args(tokens_dir, tmp_path, "1e8,6e9"))
    assert "the grid cannot fit the budget" in line and "1e+08 FLOPs gives 0" in line
    assert not (tmp_path / "runs").exists()


def test_sweep_trains_to_budget_skips_finished_runs_and_resumes(tokens_dir, tmp_path, capsys):
    out = tmp_path / "sweep"
    main(sweep_args(tokens_dir, out))
    runs = read_table(out)
    assert [r.name for r in runs] == [f"C{c}-d{d}" for c in ("3e09", "6e09") for d in (1, 2, 3)]
    assert all(r.status == "done" and r.val_loss > 0 for r in runs)
    for run in runs:  # each run spent its budget, to within the rounding to whole steps
        assert run.flops == run.steps * 512 * run.flops_per_token == pytest.approx(run.budget, rel=0.5 / run.steps)
        assert load_config(out / "runs" / run.name / "config.toml").train.max_steps == run.steps
    assert "N counted as `total`" in (out / "results.md").read_text()

    # interrupt the last run after its step-8 checkpoint: its final checkpoint and validation are gone
    run_dir = out / "runs" / runs[-1].name
    shutil.rmtree(run_dir / "checkpoints" / f"step_{runs[-1].steps:06d}")
    (run_dir / "checkpoints" / "latest").write_text("step_000008")
    metrics = run_dir / "metrics.jsonl"
    metrics.write_text("".join(line + "\n" for line in metrics.read_text().splitlines() if '"final"' not in line))
    capsys.readouterr()
    main(sweep_args(tokens_dir, out))
    captured = capsys.readouterr()
    assert "6 runs, 5 already done" in captured.err
    assert captured.out.count("resuming from") == 1 and "at step 8/" in captured.out
    assert [r.status for r in read_table(out)] == ["done"] * 6

    main(sweep_args(tokens_dir, out))  # all done: nothing trains
    assert "6 runs, 6 already done" in capsys.readouterr().err
    line = cli_error(capsys, *sweep_args(tokens_dir, out, "3e9,6e9", "--train-set", "optim.lr=0.001"))
    assert "trained with other settings" in line  # a changed plan never reuses a run of another


def test_emitted_commands_are_the_runs(tokens_dir, tmp_path, capsys):
    out = tmp_path / "cluster"
    main(sweep_args(tokens_dir, out, "3e9,6e9", "--emit-commands"))
    commands = capsys.readouterr().out.splitlines()
    assert len(commands) == 6 and all(c.startswith("codelm pretrain --config ") for c in commands)
    main(commands[0].split()[1:])  # one node runs its command
    capsys.readouterr()
    main(sweep_args(tokens_dir, out, "3e9,6e9", "--emit-commands"))
    assert capsys.readouterr().out.splitlines() == commands[1:]
    assert [r.status for r in read_table(out)] == ["done"] + ["pending"] * 5


def test_a_signal_stops_the_whole_sweep_not_just_the_run_in_progress(tokens_dir, tmp_path, capsys, monkeypatch):
    import codelm.scaling.sweep as sweep

    started = []

    def interrupted(cfg, resume=False):  # the trainer caught SIGINT/SIGTERM, checkpointed and returned
        started.append(cfg.train.out_dir)
        return {"step": 3, "stopped": True}

    monkeypatch.setattr(sweep, "pretrain", interrupted)
    main(sweep_args(tokens_dir, tmp_path / "sweep"))
    assert len(started) == 1  # the five runs after it did not start
    assert "stopped by signal in C3e09-d1" in capsys.readouterr().err
    assert [r.status for r in read_table(tmp_path / "sweep")] == ["pending"] * 6
