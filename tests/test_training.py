"""Training end to end on real stdlib code: learning, exact resume, crash safety, DDP and FSDP parity."""

import contextlib
import copy
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from conftest import REPO, run_codelm

from codelm.checkpoint import latest_checkpoint, load_model
from codelm.config import ModelConfig, OptimConfig
from codelm.data.loader import PackedLoader
from codelm.data.shards import TokenShards
from codelm.eval.bpb import unigram_entropy
from codelm.model.llama import Transformer
from codelm.train.loop import DistEnv, StageLoss, build_optimizer, train_step
from codelm.train.metrics import ValPoint, read_metrics
from codelm.train.objectives import NextToken


def losses(run_dir) -> dict[int, float]:
    train, _ = read_metrics(run_dir / "metrics.jsonl")
    return {r.step: r.loss for r in train}


def final_validation(run_dir) -> ValPoint:
    _, val = read_metrics(run_dir / "metrics.jsonl")
    return next(r for r in val if r.final)


@pytest.mark.slow
def test_a_few_hundred_steps_beat_the_unigram_baseline(tiny_config, tokens_dir):
    config, run = tiny_config()
    run_codelm("pretrain", "--config", config, "--set", "train.max_steps=300", "--set", "train.precision='auto'",
               "--set", "train.eval_every=100")
    train = TokenShards(tokens_dir / "train")
    baseline = unigram_entropy(train, train.vocab_size, eot_id=0)
    final = final_validation(run)
    assert final.loss < baseline - 1.0, (final, baseline)
    assert final.bpb < 2.5
    ckpt = latest_checkpoint(run / "checkpoints")
    assert ckpt.name == "step_000300"
    assert {"model.safetensors", "config.json", "state.json", "optimizer.pt", "tokenizer.json"} <= {
        p.name for p in ckpt.iterdir()}
    assert (run / "config.toml").read_text().count("max_steps = 300") == 1
    mfus = [r.mfu for r in read_metrics(run / "metrics.jsonl")[0] if r.mfu is not None]
    assert mfus and all(0 < m <= 1 for m in mfus), mfus  # against the peak of the precision that ran
    chosen = json.loads((run / "precision.json").read_text())
    assert chosen["requested"] == "auto" and chosen["precision"] == min(chosen["timings"], key=chosen["timings"].get)


@pytest.mark.slow
def test_muon_trains_and_resumes_exactly(tiny_config):
    config, straight = tiny_config("muon")
    muon = ["--set", "optim.name='muon'", "--set", "train.max_steps=10", "--set", "train.ckpt_every=5"]
    run_codelm("pretrain", "--config", config, *muon)
    expected = losses(straight)
    assert expected[10] < expected[1] - 0.5
    shutil.rmtree(straight / "checkpoints" / "step_000010")  # as if the run had died after step 5's checkpoint
    (straight / "checkpoints" / "latest").write_text("step_000005")
    run_codelm("pretrain", "--config", config, *muon, "--resume")
    assert losses(straight) == expected

    other_batch = run_codelm("pretrain", "--config", config, *muon, "--resume", "--set", "train.micro_batch=4",
                             check=False)  # the loader's row streams no longer match the checkpoint's
    assert other_batch.returncode == 2 and "Traceback" not in other_batch.stderr, other_batch.stderr
    assert other_batch.stderr.startswith("codelm: error: cannot resume") and "train.micro_batch" in other_batch.stderr


def test_a_diverged_loss_stops_with_one_line(tiny_config):
    config, run = tiny_config()
    proc = run_codelm("pretrain", "--config", config, "--set", "model.init_std=1e30", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert re.fullmatch(r"codelm: error: loss is nan at step \d+: lower optim.lr or check the data\n", proc.stderr)


@pytest.mark.slow
def test_sigint_then_resume_reproduces_the_uninterrupted_losses(tiny_config):
    steps = 200  # long enough that a test process starved for seconds still signals mid-run
    config, straight = tiny_config("straight")
    run_codelm("pretrain", "--config", config, "--set", f"train.max_steps={steps}")
    expected = losses(straight)

    config, interrupted = tiny_config("interrupted")
    cmd = [sys.executable, "-m", "codelm", "pretrain", "--config", str(config), "--set", f"train.max_steps={steps}"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    seen = []
    for line in proc.stdout:  # signal once the child reports step 10: its handler is in place, however slow the machine
        seen.append(line)
        if line.startswith("step ") and int(line.split()[1].split("/")[0]) >= 10:
            break
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=600)
    out = "".join(seen) + out
    assert proc.returncode == 0, out
    stopped_at = json.loads((latest_checkpoint(interrupted / "checkpoints") / "state.json").read_text())
    assert stopped_at["reason"] == "signal" and 10 <= stopped_at["step"] < steps, out

    run_codelm("pretrain", "--config", config, "--set", f"train.max_steps={steps}", "--resume")
    assert losses(interrupted) == expected  # bit for bit, every step


def test_a_kill_during_checkpoint_write_leaves_the_previous_checkpoint(tmp_path, tokens_dir):
    script = textwrap.dedent(f"""
        import os, signal, torch
        import safetensors.torch
        from codelm.config import ModelConfig
        from codelm.model.llama import Transformer
        from codelm.checkpoint import save_checkpoint
        torch.manual_seed(0)
        model = Transformer(ModelConfig(vocab_size=2048, dim=64, n_layers=1, n_heads=2, n_kv_heads=1))
        opt = torch.optim.AdamW(model.parameters())
        tok = {str(tokens_dir / "tokenizer.json")!r}
        save_checkpoint({str(tmp_path)!r}, 1, model, tok, {{"max_steps": 9}}, opt.state_dict())
        torch.save(model.state_dict(), {str(tmp_path / "expected.pt")!r})
        with torch.no_grad():
            for p in model.parameters():
                p.add_(1.0)
        real_save = safetensors.torch.save_file
        def dying_save(tensors, path, metadata=None):
            with open(path, "wb") as f:
                f.write(b"half a file")
            os.kill(os.getpid(), signal.SIGKILL)
        safetensors.torch.save_file = dying_save
        save_checkpoint({str(tmp_path)!r}, 2, model, tok, {{"max_steps": 9}}, opt.state_dict())
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert list(tmp_path.glob("step_000002.tmp*"))  # it really died mid-write
    assert latest_checkpoint(tmp_path).name == "step_000001"
    model, tok, _ = load_model(tmp_path)
    expected = torch.load(tmp_path / "expected.pt")
    for name, value in model.state_dict().items():
        assert torch.equal(value, expected[name])


def torchrun_pretrain(config, *overrides: str, resume: bool = False) -> subprocess.CompletedProcess:
    """`codelm pretrain` on two gloo processes, one thread each (the machine's two cores)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "codelm",
         "pretrain", "--config", str(config), *(["--resume"] if resume else []),
         *(a for o in overrides for a in ("--set", o))],
        cwd=REPO, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


@pytest.mark.slow
@pytest.mark.skipif(not torch.distributed.is_gloo_available(), reason="gloo backend not built into this torch")
@pytest.mark.parametrize("parallel, optimizer", [("ddp", "adamw"), ("fsdp", "adamw"), ("fsdp", "muon")])
def test_two_gloo_processes_match_one_process(tiny_config, parallel, optimizer):
    """Muon under FSDP orthogonalizes whole matrices gathered from the shards: the same steps as one process."""
    steps = 8
    config, single = tiny_config("single")
    run_codelm("pretrain", "--config", config, "--set", f"train.max_steps={steps}", "--set", "train.micro_batch=8",
               "--set", "train.eval_every=4", "--set", "train.batch_tokens=2048",  # two micro batches a step
               "--set", f"optim.name='{optimizer}'")
    config2, double = tiny_config(parallel)
    torchrun_pretrain(config2, f"train.max_steps={steps}", "train.micro_batch=4", "train.eval_every=4",
                      "train.batch_tokens=2048", f"train.parallel='{parallel}'", f"optim.name='{optimizer}'")
    one, two = losses(single), losses(double)
    assert sorted(one) == sorted(two) == list(range(1, steps + 1))
    for step in one:
        assert two[step] == pytest.approx(one[step], rel=1e-4, abs=1e-4), step
    assert one[steps] < one[1]  # and it trained
    _, val_one = read_metrics(single / "metrics.jsonl")
    _, val_two = read_metrics(double / "metrics.jsonl")
    assert [v.step for v in val_two] == [v.step for v in val_one] == [4, 8, 8]  # periodic, last, final
    for a, b in zip(val_one, val_two):
        assert b.loss == pytest.approx(a.loss, rel=1e-4)
    whole_one, _, _ = load_model(single)  # a sharded run's checkpoint holds the whole model, as any other's
    whole_two, _, _ = load_model(double)
    for name, value in whole_one.state_dict().items():
        assert torch.allclose(whole_two.state_dict()[name], value, atol=1e-3), name


@pytest.mark.slow
@pytest.mark.skipif(not torch.distributed.is_gloo_available(), reason="gloo backend not built into this torch")
@pytest.mark.parametrize("first, then, optimizer", [("fsdp", "fsdp", "adamw"), ("fsdp", "ddp", "muon"),
                                                     ("ddp", "fsdp", "muon")])
def test_a_run_resumes_from_a_checkpoint_of_either_mode(tiny_config, first, then, optimizer):
    """An FSDP checkpoint gathers the shards (weights and optimizer moments, the latter keyed by name) and a
    resume scatters them again; either mode resumes the other's checkpoint. The steps after the resume are
    the uninterrupted run's: exactly in the same mode, to rounding across modes (their sums run in other orders)."""
    config, run = tiny_config(first)
    settings = ("train.max_steps=8", "train.micro_batch=4", "train.batch_tokens=2048", "train.ckpt_every=4",
                f"optim.name='{optimizer}'")
    torchrun_pretrain(config, *settings, f"train.parallel='{first}'")
    uninterrupted = losses(run)
    checkpoints = run / "checkpoints"
    shutil.rmtree(checkpoints / "step_000008")
    (checkpoints / "latest").write_text("step_000004")
    optimizer_state = torch.load(checkpoints / "step_000004" / "optimizer.pt", weights_only=True)
    assert ("model.layers.0.mlp.up_proj.weight" in optimizer_state["state"]) == (first == "fsdp")
    proc = torchrun_pretrain(config, *settings, f"train.parallel='{then}'", resume=True)
    assert "resuming from" in proc.stdout
    resumed = losses(run)
    assert sorted(resumed) == list(range(1, 9))
    for step in range(5, 9):
        assert resumed[step] == pytest.approx(uninterrupted[step], rel=1e-6 if first == then else 1e-4), step
    if first == then:  # resuming a finished run only validates and checkpoints again, before any training step
        torchrun_pretrain(config, *settings, f"train.parallel='{then}'", resume=True)
        _, validations = read_metrics(run / "metrics.jsonl")
        *_, before, again = [v.loss for v in validations if v.final]
        assert again == pytest.approx(before, rel=1e-6)


@pytest.mark.parametrize("overrides, message", [
    (("train.parallel='zero'",), "'train.parallel' must be one of ddp, fsdp"),
    (("train.parallel='fsdp'",), "run under torchrun"),
])
def test_parallel_settings_are_checked(tiny_config, overrides, message):
    config, _ = tiny_config()
    proc = run_codelm("pretrain", "--config", config, *(a for o in overrides for a in ("--set", o)), check=False)
    assert proc.returncode == 2 and message in proc.stderr


@pytest.mark.slow
def test_a_time_budget_fixes_the_number_of_steps(tiny_config):
    config, run = tiny_config()
    proc = run_codelm("pretrain", "--config", config, "--set", "train.max_steps=0", "--set", "train.max_minutes=0.15")
    assert "time budget 0.15 min" in proc.stdout
    steps = sorted(losses(run))
    assert steps == list(range(1, steps[-1] + 1)) and steps[-1] > 3
    assert json.loads((latest_checkpoint(run / "checkpoints") / "state.json").read_text())["max_steps"] == steps[-1]


def test_the_loops_step_is_pretrainings_plain_accumulated_mean():
    """The objective protocol changed how a step is normalized (summed units over the step, not a mean of
    micro-batch means); on pretraining's full rows the two are the same, step after step."""
    rng = np.random.default_rng(0)
    docs = [rng.integers(1, 300, size=int(rng.integers(20, 200))) for _ in range(60)]
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=300, dim=32, n_layers=2, n_heads=2, n_kv_heads=1, max_seq_len=64))
    reference = copy.deepcopy(model)
    cpu, optim = torch.device("cpu"), OptimConfig(lr=1e-2, warmup_steps=0)
    ours, theirs = build_optimizer(model, optim, cpu), build_optimizer(reference, optim, cpu)
    stream, same_stream = (PackedLoader(docs, 64, 4, eot_id=0, seed=0, streams=8) for _ in range(2))
    for _ in range(3):
        result = train_step(StageLoss(model, NextToken()), NextToken(), ours, stream, contextlib.nullcontext(),
                            accum=2, grad_clip=1.0, env=DistEnv(0, 1, cpu))
        losses = []
        for _ in range(2):  # the loop as it was: each micro batch's mean loss, divided by the accumulation steps
            batch = same_stream.next_batch()
            loss = reference.loss(batch.inputs, batch.targets, batch.doc_ids)
            (loss / 2).backward()
            losses.append(float(loss.detach()))
        torch.nn.utils.clip_grad_norm_(reference.parameters(), 1.0)
        theirs.step()
        theirs.zero_grad(set_to_none=True)
        assert result.loss == pytest.approx(sum(losses) / 2, rel=1e-6)
        assert result.tokens == 2 * 4 * 64  # two micro batches of 4 full rows: what the step computed
    for a, b in zip(model.parameters(), reference.parameters()):
        assert torch.allclose(a, b, atol=1e-6)


@pytest.mark.parametrize("name", ["adamw", "muon"])
def test_embed_lr_sets_the_token_embeddings_own_peak_learning_rate(name):
    model = Transformer(ModelConfig(vocab_size=64, dim=32, n_layers=1, n_heads=2, n_kv_heads=1, max_seq_len=16))
    embedding = model.model.embed_tokens.weight
    for embed_lr, scale in ((0.0, 1.0), (0.3, 100.0)):
        optimizer = build_optimizer(model, OptimConfig(name=name, lr=3e-3, embed_lr=embed_lr), torch.device("cpu"))
        (group,) = [g for g in optimizer.param_groups if any(p is embedding for p in g["params"])]
        assert group["params"] == [embedding] and group["weight_decay"] == 0.0
        assert group["lr_scale"] == pytest.approx(scale)
        others = [p for g in optimizer.param_groups if g is not group for p in g["params"]]
        assert len(others) == len(list(model.parameters())) - 1  # every other parameter, once
