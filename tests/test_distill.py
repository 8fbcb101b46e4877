"""Distillation: the divergences against their closed forms, a student that moves toward its teacher,
GKD's on-policy batches drawn through the engine, and a teacher with another tokenizer refused."""

import json
import math

import pytest
import torch
from conftest import run_codelm, sft_config
from test_training import losses

from codelm.checkpoint import save_model
from codelm.config import ModelConfig
from codelm.inference.engine import Completion
from codelm.model.llama import Transformer
from codelm.tokenizer import train_tokenizer
from codelm.train import distill as distill_module
from codelm.train.distill import OnPolicy, distill
from codelm.train.loop import DistEnv
from codelm.train.objectives import generalized_jsd
from codelm.train.sft import start_chat_run


def kl(p_logits, q_logits):
    p, q = torch.distributions.Categorical(logits=p_logits), torch.distributions.Categorical(logits=q_logits)
    return torch.distributions.kl_divergence(p, q)


def test_divergences_match_their_closed_forms():
    torch.manual_seed(0)
    s, t = torch.randn(5, 11) * 2, torch.randn(5, 11) * 2
    for beta in (0.0, 0.3, 0.5, 1.0):
        assert torch.allclose(generalized_jsd(s, s.clone(), beta), torch.zeros(5), atol=1e-6)  # same: 0
    assert torch.allclose(generalized_jsd(s, t, 0.0), kl(t, s), atol=1e-5)  # forward KL(teacher || student)
    assert torch.allclose(generalized_jsd(s, t, 1.0), kl(s, t), atol=1e-5)  # reverse KL(student || teacher)
    jsd = generalized_jsd(s, t, 0.5)
    assert torch.allclose(jsd, generalized_jsd(t, s, 0.5), atol=1e-6)  # symmetric at beta = 0.5
    assert (jsd > 0).all() and (jsd <= math.log(2)).all()
    apart = torch.full((1, 4), -30.0)
    one, other = apart.clone(), apart.clone()
    one[0, 0], other[0, 1] = 30.0, 30.0  # disjoint supports: the bound is reached
    assert generalized_jsd(one, other, 0.5).item() == pytest.approx(math.log(2), abs=1e-4)
    assert generalized_jsd(s, t, 0.5, temperature=100.0).max() < 1e-3 < jsd.min()  # softened to near uniform


def test_a_student_moves_toward_its_teacher(tiny_chat_model, tmp_path, code_tok):
    student, data = tiny_chat_model
    torch.manual_seed(1)
    teacher = save_model(tmp_path / "teacher", Transformer(ModelConfig(
        vocab_size=code_tok.vocab_size, dim=48, n_layers=2, n_heads=2, n_kv_heads=1, max_seq_len=128)), code_tok)
    run = tmp_path / "distilled"
    cfg = sft_config(student, data, run, max_steps=8)
    cfg.distill.teacher, cfg.distill.beta = str(teacher), 0.0
    cfg.optim.lr, cfg.optim.warmup_steps = 1e-2, 1
    distill(cfg)
    steps = losses(run)
    assert steps[8] < 0.7 * steps[1]  # the forward KL to the teacher falls
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert all("nll" in r["metrics"] for r in logged if "loss" in r)  # the student's loss on the data, beside it


def test_on_policy_batches_hold_the_students_own_replies(tiny_chat_model, tmp_path, monkeypatch):
    student, data = tiny_chat_model
    cfg = sft_config(student, data, tmp_path / "x", max_steps=1)
    env = DistEnv(0, 1, torch.device("cpu"))
    run = start_chat_run(cfg, env, "distill")
    asked = []

    class Student:  # the engine, as the stream calls it, answering every prompt with a fixed reply
        def __init__(self, model, tok):
            assert model is run.model  # the weights being trained
            self.tok = tok

        def generate(self, prompts, params):
            asked.extend(self.tok.decode(p) for p in prompts)
            return [[Completion("forty-two", [])] for _ in prompts]

    monkeypatch.setattr(distill_module, "Engine", Student)
    from codelm.config import SamplingParams
    stream = OnPolicy(run, share=1.0, params=SamplingParams(strategy="sample"), seq_len=128, batch_rows=2,
                      seed=0, env=env)
    batch = stream.next_batch()
    assert len(asked) == 2 and all(a.endswith("<|im_start|>assistant\n") for a in asked)
    assert all("And doubled?" in a for a in asked)  # the prompt is the conversation before its last reply
    learned = run.tok.decode(batch.targets[batch.targets >= 0].tolist())
    assert learned == "forty-two<|im_end|>" * 2  # the new replies only, not the conversation's earlier turns
    assert OnPolicy(run, 0.0, SamplingParams(), 128, 2, 0, env).next_batch() is not None  # share 0: the data


def test_on_policy_distillation_runs_through_the_real_engine(tiny_chat_model, tmp_path, code_tok):
    student, data = tiny_chat_model
    run = tmp_path / "gkd"
    cfg = sft_config(student, data, run, max_steps=3)
    cfg.distill.teacher, cfg.distill.on_policy, cfg.distill.max_new_tokens = str(student), 0.5, 8
    distill(cfg)
    assert sorted(losses(run)) == [1, 2, 3]


def test_a_teacher_with_another_tokenizer_is_refused(tiny_chat_model, tmp_path):
    student, data = tiny_chat_model
    other = train_tokenizer(["def f(x):\n    return x\n" * 50, "class A:\n    pass\n" * 50], vocab_size=300)
    teacher = save_model(tmp_path / "teacher", Transformer(ModelConfig(
        vocab_size=other.vocab_size, dim=32, n_layers=1, n_heads=2, n_kv_heads=1, max_seq_len=128)), other)
    proc = run_codelm("distill", "--teacher", teacher, "--init-from", student, "--data", data,
                      "--out", tmp_path / "run", "--set", "data.seq_len=128", check=False)
    assert proc.returncode == 2 and "has another tokenizer than the student" in proc.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()
