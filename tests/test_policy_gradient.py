"""The policy-gradient core against hand-computed values: advantages, clipping, KL estimators, aggregation."""

import math

import pytest
import torch

from codelm.train import policy_gradient as pg

REWARDS = torch.tensor([[1.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0]])


@pytest.mark.parametrize(
    "kind,first_group",
    [
        ("group_mean", [0.5, -0.5, -0.5, 0.5]),
        (
            "group_zscore",
            [0.5 / math.sqrt(1 / 3), -0.5 / math.sqrt(1 / 3), -0.5 / math.sqrt(1 / 3), 0.5 / math.sqrt(1 / 3)],
        ),
        ("rloo", [1 - 1 / 3, 0 - 2 / 3, 0 - 2 / 3, 1 - 1 / 3]),  # each reward minus the mean of the three others
    ],
)
def test_group_advantages_by_hand(kind, first_group):
    a = pg.advantages(REWARDS, kind)
    assert a[0].tolist() == pytest.approx(first_group, abs=1e-5)
    assert a[1].tolist() == pytest.approx([0.0] * 4, abs=1e-9)  # a group with one reward carries no signal


def test_batch_advantage_uses_the_whole_batch():
    a = pg.advantages(REWARDS, "batch")
    std = math.sqrt((6 * 0.25**2 + 2 * 0.75**2) / 7)  # 6 ones and 2 zeros around the mean 0.75
    assert a[1].tolist() == pytest.approx([0.25 / std] * 4, abs=1e-5)  # all-pass group still counts here
    assert a[0, 1].item() == pytest.approx(-0.75 / std, abs=1e-5)


def test_unknown_switches_are_named():
    with pytest.raises(ValueError, match="advantage must be one of"):
        pg.advantages(REWARDS, "ppo")
    with pytest.raises(ValueError, match="aggregation must be one of"):
        pg.aggregate(torch.ones(1, 1), torch.ones(1, 1), "mean", 1)
    with pytest.raises(ValueError, match="RLOO needs at least 2"):
        pg.advantages(torch.ones(3, 1), "rloo")


def test_zero_spread_groups_are_found():
    assert pg.zero_spread(REWARDS).tolist() == [False, True]
    assert pg.zero_spread(torch.zeros(2, 3)).tolist() == [True, True]


@pytest.mark.parametrize(
    "ratio,advantage,loss,clipped",
    [
        (1.5, 1.0, -1.2, True),  # good sample already made likelier: capped at 1 + eps_high
        (0.5, 1.0, -0.5, False),  # good sample made less likely: the unclipped term, so the gradient pulls it back
        (0.5, -1.0, 0.8, True),  # bad sample already made less likely: capped at 1 - eps_low
        (1.5, -1.0, 1.5, False),  # bad sample made likelier: unclipped, pushed back down
    ],
)
def test_clipped_surrogate_by_hand(ratio, advantage, loss, clipped):
    old = torch.tensor([[math.log(0.4)]])
    logp = old + math.log(ratio)
    out = pg.token_losses(logp, old, torch.tensor([advantage]), eps_low=0.2, eps_high=0.2)
    assert out.loss.item() == pytest.approx(loss, abs=1e-6)
    assert out.clipped.item() is clipped
    assert out.kl is None


def test_clip_higher_uses_its_own_epsilon():
    old = torch.tensor([[0.0]])
    out = pg.token_losses(old + math.log(1.5), old, torch.tensor([1.0]), eps_low=0.2, eps_high=0.28)
    assert out.loss.item() == pytest.approx(-1.28, abs=1e-6)


def test_kl_estimators_by_hand():
    logp, ref = torch.tensor([[math.log(0.5)]]), torch.tensor([[math.log(0.25)]])
    assert pg.kl_per_token(logp, ref, "k1").item() == pytest.approx(math.log(2))
    assert pg.kl_per_token(logp, ref, "k3").item() == pytest.approx(0.5 + math.log(2) - 1)
    assert pg.kl_per_token(ref, ref, "k3").item() == 0.0
    out = pg.token_losses(logp, logp.detach(), torch.tensor([0.0]), 0.2, 0.2, ref, "k3", kl_coef=0.1)
    assert out.loss.item() == pytest.approx(0.1 * (0.5 + math.log(2) - 1))


def test_k3_is_never_negative_and_unbiased_for_kl():
    torch.manual_seed(0)
    p, q = torch.softmax(torch.randn(50), 0), torch.softmax(torch.randn(50), 0)
    samples = torch.multinomial(p, 200_000, replacement=True)
    k3 = pg.kl_per_token(p.log()[samples], q.log()[samples], "k3")
    assert (k3 >= 0).all()
    assert k3.mean().item() == pytest.approx(float((p * (p.log() - q.log())).sum()), rel=0.03)


VALUES = torch.tensor([[1.0, 2.0, 3.0, 0.0], [4.0, 0.0, 0.0, 0.0]])
MASK = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]])


@pytest.mark.parametrize("kind,loss", [("token", 10 / 4), ("sequence", (6 / 3 + 4 / 1) / 2), ("constant", 10 / 4 / 2)])
def test_aggregations_by_hand(kind, loss):
    total = pg.aggregate(VALUES, MASK, kind, max_tokens=4)
    assert total.item() / pg.units(MASK, kind) == pytest.approx(loss)


def test_reinforce_is_a_setting_of_the_core():
    """nanochat's chat_rl: advantage = reward - group mean, loss = -sum(logp * A) over valid tokens / their count,
    no clipping, no KL, one update per rollout (so logp at rollout time equals logp)."""
    torch.manual_seed(0)
    logits = torch.randn(4, 5, 7, requires_grad=True)
    tokens = torch.randint(0, 7, (4, 5))
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0], [1, 1, 0, 0, 0]])
    rewards = torch.tensor([[1.0, 0.0], [0.0, 0.0]])

    def logp():
        return torch.log_softmax(logits, -1).gather(-1, tokens[..., None])[..., 0]

    a = pg.advantages(rewards, "group_mean").flatten()
    ours = pg.aggregate(pg.token_losses(logp(), logp().detach(), a, 0.2, 0.2).loss, mask, "token", 5)
    ours = ours / pg.units(mask, "token")
    (grad_ours,) = torch.autograd.grad(ours, logits)
    nanochat = -(logp() * a[:, None] * mask).sum() / mask.sum()
    (grad_nanochat,) = torch.autograd.grad(nanochat, logits)
    assert grad_ours.abs().sum() > 0 and torch.allclose(grad_ours, grad_nanochat, atol=1e-7)
