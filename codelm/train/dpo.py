"""Direct preference optimisation (Rafailov et al. 2023): learn from (prompt, chosen, rejected) without a reward model.

The loss of a pair compares how much the policy raised each completion's
log-probability over the reference's: with h = (log pi(chosen) - log ref(chosen))
- (log pi(rejected) - log ref(rejected)) summed over completion tokens, "sigmoid"
is -log sigmoid(beta h) (log 2 when the policy is the reference), and "ipo"
(Azar et al. 2023) is (h' - 1/(2 beta))^2 on per-token mean log-probs, which does
not push the margin without bound. The reference's log-probs are computed once
before training (they never change) and cached under ~/.cache/codelm, keyed by a
hash of the reference's weights and of the pairs' token ids. With LoRA the
reference is the base, which is what the policy is before its first step.

Pairs come from a file or from execution ([pairs], codelm.train.pairs).
"""

import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from codelm import checkpoint as ckpt
from codelm.config import Config, DPOConfig
from codelm.data.loader import IGNORE
from codelm.errors import UserError
from codelm.io import atomic_write_json
from codelm.model.llama import Transformer
from codelm.train.loop import DistEnv, setup_distributed, start_from, train
from codelm.train.pairs import Pair, PairStream, gather_pairs, held_out_pass_rate, held_out_ranking
from codelm.train.reference import Reference, token_logprobs

CACHE = Path(os.environ.get("CODELM_CACHE", Path.home() / ".cache" / "codelm")) / "dpo-reference"


@dataclass
class PairBatch:
    inputs: torch.Tensor  # (2B, T): chosen and rejected rows interleaved
    targets: torch.Tensor  # (2B, T), IGNORE outside the completions
    reference: torch.Tensor  # (B, 2, 2): [chosen, rejected] x [summed log-prob, completion tokens]

    def to(self, device) -> "PairBatch":
        return PairBatch(self.inputs.to(device), self.targets.to(device), self.reference.to(device))


def collate(pairs: list[Pair], pad_id: int, reference: torch.Tensor | None = None) -> PairBatch:
    rows = [(p.prompt, c) for p in pairs for c in (p.chosen, p.rejected)]
    width = max(len(prompt) + len(c) for prompt, c in rows) - 1
    inputs = torch.full((len(rows), width), pad_id, dtype=torch.long)
    targets = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    for i, (prompt, completion) in enumerate(rows):
        ids = torch.tensor(prompt + completion)
        inputs[i, : len(ids) - 1] = ids[:-1]
        targets[i, len(prompt) - 1 : len(ids) - 1] = ids[len(prompt):]
    return PairBatch(inputs, targets, reference if reference is not None else torch.zeros(len(pairs), 2, 2))


def sequence_logprobs(model, batch: PairBatch) -> torch.Tensor:
    """(B, 2, 2): per pair, [chosen, rejected] x [summed log-prob of the completion, its token count]."""
    keep = batch.targets != IGNORE
    logp = (token_logprobs(model, batch.inputs, batch.targets) * keep).sum(-1)
    return torch.stack([logp, keep.sum(-1).to(logp.dtype)], dim=-1).view(-1, 2, 2)


def dpo_loss(policy: torch.Tensor, reference: torch.Tensor, beta: float, kind: str) -> tuple[torch.Tensor, dict]:
    """Per-pair losses and metrics from (B, 2, 2) sequence log-probs of policy and reference (see the module doc)."""
    if kind == "ipo":  # per-token means: IPO's target margin is on a length-free scale
        ratio = policy[..., 0] / policy[..., 1] - reference[..., 0] / reference[..., 1]
        losses = (ratio[:, 0] - ratio[:, 1] - 1 / (2 * beta)) ** 2
    elif kind == "sigmoid":
        ratio = policy[..., 0] - reference[..., 0]
        losses = -F.logsigmoid(beta * (ratio[:, 0] - ratio[:, 1]))
    else:
        raise ValueError(f"unknown DPO loss {kind!r}")
    rewards = (beta * ratio).detach()  # the implicit rewards TRL logs
    return losses, {"rewards_chosen": rewards[:, 0], "rewards_rejected": rewards[:, 1],
                    "margin": rewards[:, 0] - rewards[:, 1], "accuracy": (rewards[:, 0] > rewards[:, 1]).float()}


class DPO:
    """The Objective: summed over pairs (the loop divides by the step's pairs)."""

    def __init__(self, beta: float, kind: str):
        self.beta, self.kind = beta, kind

    def units(self, batch: PairBatch) -> int:
        return len(batch.reference)

    def __call__(self, model, batch: PairBatch):
        losses, found = dpo_loss(sequence_logprobs(model, batch), batch.reference, self.beta, self.kind)
        return losses.sum(), {name: value.sum() for name, value in found.items()}


def weights_digest(checkpoint: str) -> str:
    """sha256 over a checkpoint's weight files: what a cached reference is valid for."""
    folder = ckpt.resolve_checkpoint(checkpoint)
    digest = hashlib.sha256()
    for path in sorted(folder.glob("*.safetensors")):
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def pairs_digest(pairs: list[Pair]) -> str:
    return hashlib.sha256(json.dumps([[p.prompt, p.chosen, p.rejected] for p in pairs]).encode()).hexdigest()


@torch.no_grad()
def reference_logprobs(score, policy: Transformer, pairs: list[Pair], weights: str, pad_id: int, batch_pairs: int,
                       log=print) -> tuple[torch.Tensor, bool]:
    """(N, 2, 2) reference log-probs of every pair (score(policy, inputs, targets) gives per-token log-probs) and
    whether they came from the cache."""
    key = hashlib.sha256(f"{weights}|{pairs_digest(pairs)}".encode()).hexdigest()[:32]
    path = CACHE / f"{key}.pt"
    if path.is_file():
        log(f"reference log-probs: cached ({path})")
        return torch.load(path), True
    was_training = policy.training
    policy.eval()
    parts = []
    for start in range(0, len(pairs), batch_pairs):
        batch = collate(pairs[start : start + batch_pairs], pad_id)
        keep = batch.targets != IGNORE
        logp = (score(policy, batch.inputs, batch.targets) * keep).sum(-1)
        parts.append(torch.stack([logp, keep.sum(-1).to(logp.dtype)], dim=-1).view(-1, 2, 2))
    policy.train(was_training)
    values = torch.cat(parts)
    try:
        CACHE.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save(values, tmp)
        tmp.replace(path)
    except OSError:
        pass  # a read-only home computes them again next time
    log(f"reference log-probs: computed for {len(pairs)} pairs, cached as {path}")
    return values, False


def held_out_accuracy(model: Transformer, pairs: list[Pair], reference: torch.Tensor, d: DPOConfig, pad_id: int,
                      batch_pairs: int) -> dict:
    """Mean loss and the share of held-out pairs whose implicit reward ranks chosen above rejected."""
    def score(start: int, end: int):
        batch = collate(pairs[start:end], pad_id, reference[start:end])
        return dpo_loss(sequence_logprobs(model, batch), batch.reference, d.beta, d.loss)

    return held_out_ranking(model, len(pairs), batch_pairs, score)


def dpo(cfg: Config, resume: bool = False) -> dict:
    env: DistEnv = setup_distributed(cfg.train.device)
    d, t = cfg.dpo, cfg.train
    if d.beta <= 0:
        raise UserError(f"dpo.beta must be above 0, got {d.beta}")
    model, tok, source = start_from(cfg, "dpo")
    run_dir = Path(t.out_dir)
    pad_id = tok.eot_id if tok.eot_id is not None else 0
    data = gather_pairs(cfg, model, tok, env, run_dir)
    if d.reference:
        score = Reference(model, tok, d.reference).logprobs
    else:  # the policy before its first step is the reference (with LoRA: its base, the adapters not yet added)
        def score(policy, inputs, targets):
            return token_logprobs(policy, inputs, targets)
    log = print if env.is_main else (lambda *a: None)
    weights = weights_digest(d.reference or t.init_from)
    train_ref, _ = reference_logprobs(score, model, data.train, weights, pad_id, t.micro_batch, log)
    held_ref, _ = reference_logprobs(score, model, data.held_out, weights, pad_id, t.micro_batch, log)
    log(f"dpo: {len(data.train)} pairs to train on, {len(data.held_out)} held out | {d.loss} loss, beta {d.beta:g}")

    def make_batch(picks: list[int]) -> PairBatch:
        return collate([data.train[i] for i in picks], pad_id, train_ref[picks])

    stream = PairStream(len(data.train), make_batch, t.micro_batch, t.seed, env.rank, env.world)
    result = train(cfg, env, model, stream, DPO(d.beta, d.loss), None, source / "tokenizer.json", resume, recipe="dpo")
    if not result.get("stopped"):
        if data.held_tasks:
            held_out_pass_rate(cfg, model, tok, data, env)
        if data.held_out:
            data.report["after"] = held_out_accuracy(model, data.held_out, held_ref, d, pad_id, t.micro_batch)
            log(f"held-out pairs: {data.report['after']['accuracy']:.1%} ranked right by the implicit reward, loss "
                f"{data.report['after']['loss']:.4f} (log 2 = {math.log(2):.4f} at the start)")
    if env.is_main:
        atomic_write_json(run_dir / "dpo.json", data.report)
    return {**result, **data.report}
