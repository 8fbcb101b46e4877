"""DPO: the loss against its closed form, IPO, the reference cache, pair files, and DPO from execution end to end."""

import json
import math

import pytest
import torch
from conftest import run_codelm

from codelm.checkpoint import save_model
from codelm.config import ModelConfig
from codelm.errors import UserError
from codelm.model.llama import Transformer
from codelm.tokenizer import train_tokenizer
from codelm.train import dpo as dpo_module
from codelm.train.dpo import dpo_loss, reference_logprobs
from codelm.train.pairs import Pair, read_pairs

# (pairs, [chosen, rejected], [summed log-prob, tokens])
POLICY = torch.tensor([[[-1.0, 2.0], [-3.0, 3.0]]])
REFERENCE = torch.tensor([[[-2.0, 2.0], [-2.5, 3.0]]])


def test_identical_policy_and_reference_give_log_2():
    values = torch.tensor([[[-4.0, 3.0], [-7.0, 5.0]], [[-1.0, 1.0], [-0.5, 2.0]]])
    losses, found = dpo_loss(values, values, beta=0.1, kind="sigmoid")
    assert losses.tolist() == pytest.approx([math.log(2)] * 2)
    assert found["margin"].tolist() == [0.0, 0.0] and found["accuracy"].tolist() == [0.0, 0.0]
    ipo, _ = dpo_loss(values, values, beta=0.1, kind="ipo")
    assert ipo.tolist() == pytest.approx([(1 / 0.2) ** 2] * 2)  # IPO's target margin is 1 / (2 beta)


def test_sigmoid_loss_by_hand():
    (loss,), found = dpo_loss(POLICY, REFERENCE, beta=0.1, kind="sigmoid")
    h = (-1 - -2) - (-3 - -2.5)  # 1.5: the chosen completion rose, the rejected one fell
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-0.1 * h)))
    assert found["rewards_chosen"].item() == pytest.approx(0.1)
    assert found["rewards_rejected"].item() == pytest.approx(-0.05)
    assert found["margin"].item() == pytest.approx(0.15) and found["accuracy"].item() == 1.0


def test_ipo_loss_by_hand():
    (loss,), _ = dpo_loss(POLICY, REFERENCE, beta=0.1, kind="ipo")
    h = (-1 / 2 - -2 / 2) - (-3 / 3 - -2.5 / 3)  # per-token means
    assert loss.item() == pytest.approx((h - 5) ** 2)


def test_gradient_raises_chosen_and_lowers_rejected():
    policy = POLICY.clone().requires_grad_(True)
    (loss,), _ = dpo_loss(policy, REFERENCE, beta=0.1, kind="sigmoid")
    loss.backward()
    assert policy.grad[0, 0, 0] < 0 < policy.grad[0, 1, 0]  # descent raises log pi(chosen), lowers log pi(rejected)


def test_reference_is_computed_once_and_keyed_by_weights_and_pairs(monkeypatch, tmp_path):
    monkeypatch.setattr(dpo_module, "CACHE", tmp_path / "cache")
    calls = []

    def score(policy, inputs, targets):
        calls.append(len(inputs))
        return -torch.ones(targets.shape) * (targets >= 0)

    policy = torch.nn.Linear(1, 1)
    pairs = [Pair([1, 2], [3, 4], [5], "a"), Pair([1], [2], [3, 4, 5], "b")]
    first, hit = reference_logprobs(score, policy, pairs, "weights-1", 0, 4, log=lambda *_: None)
    assert not hit and calls == [4]  # both pairs, chosen and rejected rows, in one batch
    assert first[:, :, 1].tolist() == [[2.0, 1.0], [1.0, 3.0]] and first[:, :, 0].tolist() == [
        [-2.0, -1.0],
        [-1.0, -3.0],
    ]
    again, hit = reference_logprobs(score, policy, pairs, "weights-1", 0, 4, log=lambda *_: None)
    assert hit and torch.equal(again, first) and calls == [4]
    _, hit = reference_logprobs(score, policy, pairs, "weights-2", 0, 4, log=lambda *_: None)
    assert not hit  # another reference checkpoint
    _, hit = reference_logprobs(score, policy, pairs[:1], "weights-1", 0, 4, log=lambda *_: None)
    assert not hit  # other data


def test_pair_files_plain_and_chat(tmp_path, code_tok):
    path = tmp_path / "pairs.jsonl"
    rows = [
        {"prompt": "def one():\n", "chosen": "    return 1\n", "rejected": "    return 2\n"},
        {
            "prompt": [{"role": "user", "content": "One?"}],
            "chosen": [{"role": "assistant", "content": "1"}],
            "rejected": {"role": "assistant", "content": "2"},
        },
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    plain, chat = read_pairs(path, code_tok)
    assert plain.chosen[-1] == code_tok.eot_id and code_tok.decode(plain.chosen[:-1]) == "    return 1\n"
    assert code_tok.decode(chat.prompt).endswith("<|im_start|>assistant\n")
    assert code_tok.decode(chat.chosen).startswith("1") and code_tok.decode(chat.rejected).startswith("2")
    path.write_text(json.dumps({"prompt": "x", "chosen": "y"}) + "\n")
    with pytest.raises(UserError, match="pairs.jsonl:1: a pair needs 'prompt', 'chosen' and 'rejected'"):
        read_pairs(path, code_tok)
    path.write_text(json.dumps({"prompt": 3, "chosen": "y", "rejected": "z"}) + "\n")
    with pytest.raises(UserError, match="'prompt' must be text or a list of chat messages"):
        read_pairs(path, code_tok)


@pytest.mark.slow
def test_dpo_from_execution_learns_to_prefer_passing_programs(noisy_arithmetic_model, tmp_path):
    out = tmp_path / "dpo"
    run_codelm(
        "dpo",
        "--init-from",
        noisy_arithmetic_model,
        "--from-tasks",
        "procedural:200:1:0",
        "--out",
        out,
        "--set",
        "train.precision='fp32'",
        "--set",
        "train.compile=false",
        "--set",
        "optim.lr=5e-4",
        "--set",
        "pairs.max_new_tokens=24",
        "--set",
        "pairs.val_fraction=0.3",
        "--set",
        "pairs.epochs=3",
        "--set",
        "pairs.workers=2",
    )
    report = json.loads((out / "dpo.json").read_text())
    pairs = (out / "pairs.jsonl").read_text().splitlines()
    assert len(pairs) > 50 and {"chosen", "rejected", "rejected_outcome"} <= json.loads(pairs[0]).keys()
    assert report["after"]["accuracy"] > 0.8, report  # held-out tasks' pairs, never trained on
    assert report["pass_after"]["pass_rate"] > report["pass_before"]["pass_rate"] + 0.2, report


def test_dpo_bad_input_is_one_line_and_status_2(noisy_arithmetic_model, tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"prompt": "x" * 600, "chosen": "y", "rejected": "z"}) + "\n")
    other_tok = train_tokenizer(["def other(x):\n    return x + 1\n" * 40], vocab_size=300)
    other = save_model(
        tmp_path / "other",
        Transformer(ModelConfig(vocab_size=other_tok.vocab_size, dim=16, n_layers=1, n_heads=2, n_kv_heads=1)),
        other_tok,
    )
    short = tmp_path / "short.jsonl"
    short.write_text(json.dumps({"prompt": "x", "chosen": "y", "rejected": "z"}) + "\n")
    cases = [
        (["--pairs", pairs], "longer than the model's context"),
        (["--pairs", short, "--reference", other], "has another tokenizer than the policy"),
        ([], "give preference pairs (--pairs FILE.jsonl) or tasks"),
        (["--pairs", pairs, "--set", "dpo.loss='hinge'"], "'dpo.loss' must be one of sigmoid, ipo"),
    ]
    for extra, message in cases:
        proc = run_codelm("dpo", "--init-from", noisy_arithmetic_model, "--out", tmp_path / "out", *extra, check=False)
        assert proc.returncode == 2 and message in proc.stderr, (extra, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
