"""The reward model: the Bradley-Terry loss, learning a synthetic preference, its checkpoints, and RL rewarded by it."""

import json
import math

import pytest
import torch
from conftest import run_codelm

from codelm.checkpoint import load_model, save_model
from codelm.config import ModelConfig
from codelm.errors import UserError
from codelm.tokenizer import train_tokenizer
from codelm.train.reward_model import RewardModel, bradley_terry, load_reward_model


def test_bradley_terry_by_hand():
    losses, found = bradley_terry(torch.tensor([[1.0, 0.0], [0.0, 0.0], [-1.0, 1.0]]))
    assert losses.tolist() == pytest.approx([math.log(1 + math.exp(-1)), math.log(2), math.log(1 + math.exp(2))])
    assert found["accuracy"].tolist() == [1.0, 0.0, 0.0] and found["margin"].tolist() == [1.0, 0.0, -2.0]


@pytest.mark.parametrize("tied", [False, True])
def test_flops_count_the_layers_and_the_score_head_not_the_lm_head(tied):
    cfg = ModelConfig(vocab_size=64, dim=32, n_layers=2, n_heads=2, n_kv_heads=1, max_seq_len=16, tie_embeddings=tied)
    model = RewardModel(cfg)
    weights = sum(p.numel() for p in model.model.layers.parameters()) + 32 + 32  # layers, final norm, score head
    assert model.flops_per_token(16) == 6 * weights + 12 * 2 * 32 * 16


def test_a_fresh_head_scores_zero_and_reads_each_rows_last_token():
    torch.manual_seed(0)
    model = RewardModel(ModelConfig(vocab_size=64, dim=16, n_layers=1, n_heads=2, n_kv_heads=1, max_seq_len=32))
    ids = torch.randint(0, 64, (2, 10))
    assert model.rewards(ids, torch.tensor([9, 4])).tolist() == [0.0, 0.0]
    torch.nn.init.normal_(model.score_head.weight)
    short = model.rewards(ids[:1, :5], torch.tensor([4]))
    assert torch.allclose(model.rewards(ids, torch.tensor([9, 4]))[1:], model.rewards(ids[1:, :5], torch.tensor([4])))
    assert short.shape == (1,)  # padding after a row's end never reaches its reward (causal attention)


def test_reward_model_learns_a_synthetic_preference_and_loads_only_as_itself(tiny_chat_model, tmp_path, code_tok):
    """Preferred: a function that returns its argument doubled; rejected: one that passes. Held out by hash."""
    ckpt, _ = tiny_chat_model
    rows = [{"prompt": f"def f_{i}(x):\n", "chosen": f"    return x * {i % 7 + 2}\n", "rejected": "    pass\n"}
            for i in range(120)]
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "rm"
    run_codelm("reward-model", "--init-from", ckpt, "--pairs", pairs, "--out", out, "--set", "optim.lr=3e-3",
               "--set", "train.precision='fp32'", "--set", "train.compile=false", "--set", "pairs.val_fraction=0.2",
               "--set", "pairs.epochs=3")
    report = json.loads((out / "reward_model.json").read_text())
    assert report["before"]["loss"] == pytest.approx(math.log(2), abs=1e-4)  # a zero head: no preference yet
    assert report["after"]["accuracy"] == 1.0 and report["after"]["loss"] < 0.3, report
    model, _ = load_reward_model(out)
    assert isinstance(model, RewardModel)
    with pytest.raises(UserError, match="holds a RewardModel, not a Transformer"):
        load_model(out)
    other = train_tokenizer(["def other(): return 1\n" * 50], vocab_size=300)
    with pytest.raises(UserError, match="has another tokenizer than the policy"):
        load_reward_model(out, other)
    plain = save_model(tmp_path / "plain", load_model(ckpt)[0], code_tok)
    with pytest.raises(UserError, match="holds a Transformer, not a RewardModel"):
        load_reward_model(plain)


@pytest.mark.slow
def test_rlhf_reward_model_from_execution_then_rl_rewarded_by_it(noisy_arithmetic_model, tmp_path):
    rm = tmp_path / "rm"
    run_codelm("reward-model", "--init-from", noisy_arithmetic_model, "--from-tasks", "procedural:300:1:0", "--out", rm,
               "--set", "optim.lr=1e-3", "--set", "train.precision='fp32'", "--set", "train.compile=false",
               "--set", "pairs.max_new_tokens=24", "--set", "pairs.epochs=40", "--set", "pairs.val_fraction=0.3")
    assert json.loads((rm / "reward_model.json").read_text())["after"]["accuracy"] > 0.85  # measured 96.6%
    out = tmp_path / "rl"
    run_codelm("rl", "--init-from", noisy_arithmetic_model, "--tasks", "procedural:100:1:1", "--out", out,
               "--set", f"rl.reward_model='{rm}'", "--set", "train.max_steps=2", "--set", "rl.max_new_tokens=24",
               "--set", "train.precision='fp32'", "--set", "train.compile=false", "--set", "rl.held_out=0.0")
    audit = [json.loads(line) for line in (out / "reward_audit.jsonl").read_text().splitlines()]
    assert len(audit) == 64 and len({round(a["reward"], 6) for a in audit}) > 2  # scores, not pass/fail
    passed = [a["reward"] for a in audit if a["outcome"] == "passed"]
    failed = [a["reward"] for a in audit if a["outcome"] != "passed"]
    assert passed and failed and sum(passed) / len(passed) > sum(failed) / len(failed)  # it learned the tests' taste
