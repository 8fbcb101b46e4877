"""One policy-gradient core with switches; GRPO, DAPO, Dr. GRPO, RLOO and REINFORCE are settings of it.

Rewards come in groups: n samples of the same prompt (shape groups x n).
- advantage: "group_mean" (reward minus its group's mean: nanochat's REINFORCE,
  Dr. GRPO), "group_zscore" (then divided by the group's standard deviation:
  GRPO, DAPO), "rloo" (minus the mean of the *other* samples of the group:
  Ahmadian et al. 2024), "batch" (minus the batch mean, over the batch's
  standard deviation: REINFORCE++'s global baseline).
- ratio clipping with separate low and high epsilon (DAPO's clip-higher), on
  exp(logp - logp_at_rollout): with one update per rollout the ratio is 1 and
  clipping never binds (REINFORCE); with several it is PPO's trust region.
- KL to a reference, per token: "k1" (logp - ref) or "k3" (Schulman's unbiased,
  always non-negative estimator exp(ref - logp) - (ref - logp) - 1), times a
  coefficient; "none" needs no reference at all.
- aggregation of token losses into the step's loss: "sequence" (each sequence's
  mean over its tokens, then the mean over sequences: GRPO), "token" (the mean
  over every token of the step: DAPO, nanochat), "constant" (each sequence's sum
  over a fixed max_tokens: Dr. GRPO, which removes the length bias of both).
Groups whose rewards are all equal teach nothing under a group baseline (every
advantage is 0); they can be skipped before they cost a forward pass.
"""

from dataclasses import dataclass

import torch

ADVANTAGES = ("group_mean", "group_zscore", "rloo", "batch")
AGGREGATIONS = ("sequence", "token", "constant")
KL_ESTIMATORS = ("none", "k1", "k3")
EPS = 1e-6


def advantages(rewards: torch.Tensor, kind: str) -> torch.Tensor:
    """Advantages of rewards shaped (groups, n), same shape. The group z-score uses the unbiased standard deviation
    (as TRL's GRPO), so a group of two with rewards 0 and 1 gets -0.707 and +0.707."""
    r = rewards.double()
    centred = r - r.mean(dim=1, keepdim=True)
    if kind == "group_mean":
        out = centred
    elif kind == "group_zscore":
        out = centred / (r.std(dim=1, keepdim=True) + EPS)
    elif kind == "rloo":
        n = r.shape[1]
        if n < 2:
            raise ValueError("RLOO needs at least 2 samples per prompt")
        out = centred * n / (n - 1)  # r - mean(others) = n/(n-1) (r - mean(all))
    elif kind == "batch":
        out = (r - r.mean()) / (r.std() + EPS)
    else:
        raise ValueError(f"advantage must be one of {', '.join(ADVANTAGES)}; got {kind!r}")
    return out.to(rewards.dtype if rewards.is_floating_point() else torch.float32)


def zero_spread(rewards: torch.Tensor) -> torch.Tensor:
    """(groups,) True where every sample of the group got the same reward."""
    return (rewards == rewards[:, :1]).all(dim=1)


def kl_per_token(logp: torch.Tensor, ref_logp: torch.Tensor, kind: str) -> torch.Tensor:
    """Estimate of KL(policy || reference) at each sampled token."""
    if kind == "k1":
        return logp - ref_logp
    if kind == "k3":
        log_ratio = ref_logp - logp
        return torch.exp(log_ratio) - log_ratio - 1
    raise ValueError(f"kl must be one of {', '.join(KL_ESTIMATORS)}; got {kind!r}")


@dataclass
class TokenLosses:
    loss: torch.Tensor  # (B, T) per-token loss to aggregate
    clipped: torch.Tensor  # (B, T) bool: the clipped term was the one used (its gradient is zero)
    kl: torch.Tensor | None  # (B, T) the KL estimate, or None without a reference


def token_losses(logp: torch.Tensor, old_logp: torch.Tensor, advantage: torch.Tensor, eps_low: float,
                 eps_high: float, ref_logp: torch.Tensor | None = None, kl: str = "none",
                 kl_coef: float = 0.0) -> TokenLosses:
    """PPO's clipped surrogate per token, -min(ratio A, clip(ratio, 1 - eps_low, 1 + eps_high) A), plus
    kl_coef times the KL estimate. logp, old_logp, ref_logp: (B, T) log-probs of the sampled tokens;
    advantage: (B,) one per sequence."""
    ratio = torch.exp(logp - old_logp)
    a = advantage[:, None]
    unclipped = ratio * a
    clipped = torch.clamp(ratio, 1 - eps_low, 1 + eps_high) * a
    loss = -torch.minimum(unclipped, clipped)
    kl_values = None
    if kl != "none":
        kl_values = kl_per_token(logp, ref_logp, kl)
        loss = loss + kl_coef * kl_values
    return TokenLosses(loss, (clipped < unclipped).detach(), kl_values)


def aggregate(values: torch.Tensor, mask: torch.Tensor, kind: str, max_tokens: int) -> torch.Tensor:
    """Per-token values summed over the mask such that, divided by `units` summed over a step's micro batches,
    they give the step's loss under `kind`."""
    mask = mask.to(values.dtype)
    per_sequence = (values * mask).sum(dim=1)
    if kind == "token":
        return per_sequence.sum()
    if kind == "sequence":
        return (per_sequence / mask.sum(dim=1).clamp(min=1)).sum()
    if kind == "constant":
        return per_sequence.sum() / max_tokens
    raise ValueError(f"aggregation must be one of {', '.join(AGGREGATIONS)}; got {kind!r}")


def units(mask: torch.Tensor, kind: str) -> int:
    """What `aggregate` divides by: tokens ("token"), or sequences with at least one token (the others)."""
    return int(mask.sum()) if kind == "token" else int((mask.sum(dim=1) > 0).sum())
