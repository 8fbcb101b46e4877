"""A reward model: the transformer with a scalar head, trained on preference pairs by the Bradley-Terry loss.

The reward of a sequence (prompt + completion) is a linear head on the final
hidden state of its last token. Bradley-Terry models the probability that
chosen beats rejected as sigmoid(r_chosen - r_rejected), so the loss of a pair
is -log sigmoid(r_chosen - r_rejected): log 2 while the head is zero, as it
starts. Held-out pair accuracy is the share of held-out pairs ranked right. A
reward model is a checkpoint like any other (its config.json names the
class, so it is never loaded as a language model), loaded with `load_reward_model`; `codelm rl` uses one
as its reward with `rl.reward_model` (RLHF) instead of the tests.
"""

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from codelm import checkpoint as ckpt
from codelm.config import Config, ModelConfig
from codelm.errors import UserError
from codelm.io import atomic_write_json
from codelm.model.llama import Transformer
from codelm.tokenizer import Tokenizer
from codelm.train.loop import DistEnv, setup_distributed, start_from, train
from codelm.train.pairs import Pair, PairStream, gather_pairs, held_out_ranking


class RewardModel(Transformer):
    """A Transformer (so the loop, checkpoints and precision probes treat it as one) plus `score_head`."""

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        self.score_head = nn.Linear(cfg.dim, 1, bias=False)
        nn.init.zeros_(self.score_head.weight)  # every reward 0 at first: the loss starts at log 2

    def rewards(self, input_ids: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
        """(B,) the reward of each row, read at its position `last` (its final real token)."""
        hidden = self._packed_hidden(input_ids)
        return self.score_head(hidden[torch.arange(len(last), device=last.device), last]).squeeze(-1).float()

    def matmul_weights(self) -> int:
        """The Transformer's, less the LM head, which a reward model never runs (counted, MFU read above 100%)."""
        return super().matmul_weights() - self.lm_head.weight.numel()


def load_reward_model(path: str | Path, policy_tok: Tokenizer | None = None) -> tuple[RewardModel, Tokenizer]:
    """A `codelm reward-model` checkpoint; with policy_tok, an error unless it has the same tokenizer."""
    model, tok, _ = ckpt.load_model(path, model_class=RewardModel)
    if policy_tok is not None and tok.hf.get_vocab() != policy_tok.hf.get_vocab():
        raise UserError(f"the reward model {path} has another tokenizer than the policy: it would score other "
                        "token ids than the policy wrote")
    return model, tok


@dataclass
class SequenceBatch:
    """Whole sequences (chosen and rejected interleaved) and where each ends."""

    inputs: torch.Tensor  # (2B, T)
    last: torch.Tensor  # (2B,)

    def to(self, device) -> "SequenceBatch":
        return SequenceBatch(self.inputs.to(device), self.last.to(device))


def sequences(rows: list[list[int]], pad_id: int) -> SequenceBatch:
    inputs = torch.full((len(rows), max(len(r) for r in rows)), pad_id, dtype=torch.long)
    for i, r in enumerate(rows):
        inputs[i, : len(r)] = torch.tensor(r)
    return SequenceBatch(inputs, torch.tensor([len(r) - 1 for r in rows]))


def pair_batch(pairs: list[Pair], pad_id: int) -> SequenceBatch:
    return sequences([p.prompt + c for p in pairs for c in (p.chosen, p.rejected)], pad_id)


def bradley_terry(rewards: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """Per-pair losses and metrics from (B, 2) rewards [chosen, rejected]."""
    margin = rewards[:, 0] - rewards[:, 1]
    return -F.logsigmoid(margin), {"margin": margin.detach(), "accuracy": (margin > 0).float().detach()}


class BradleyTerry:
    """The Objective, summed over pairs."""

    def units(self, batch: SequenceBatch) -> int:
        return len(batch.last) // 2

    def __call__(self, model: RewardModel, batch: SequenceBatch):
        losses, found = bradley_terry(model.rewards(batch.inputs, batch.last).view(-1, 2))
        return losses.sum(), {name: value.sum() for name, value in found.items()}


def held_out_accuracy(model: RewardModel, pairs: list[Pair], pad_id: int, batch_pairs: int) -> dict:
    def score(start: int, end: int):
        batch = pair_batch(pairs[start:end], pad_id)
        return bradley_terry(model.rewards(batch.inputs, batch.last).view(-1, 2))

    return held_out_ranking(model, len(pairs), batch_pairs, score)


def reward_model(cfg: Config, resume: bool = False) -> dict:
    env: DistEnv = setup_distributed(cfg.train.device)
    t = cfg.train
    if cfg.lora.r:
        raise UserError("reward-model trains the whole model and its head: LoRA (lora.r) is not supported for it")
    base, tok, source = start_from(cfg, "reward-model")
    model = RewardModel(base.config)
    missing, unexpected = model.load_state_dict(base.state_dict(), strict=False)
    assert missing == ["score_head.weight"] and not unexpected, (missing, unexpected)
    del base
    model.train()
    run_dir = Path(t.out_dir)
    pad_id = tok.eot_id if tok.eot_id is not None else 0
    data = gather_pairs(cfg, model, tok, env, run_dir)
    if env.is_main:
        print(f"reward-model: {len(data.train)} pairs to train on, {len(data.held_out)} held out | Bradley-Terry",
              flush=True)
    report = {"before": held_out_accuracy(model, data.held_out, pad_id, t.micro_batch)} if data.held_out else {}

    def make_batch(picks: list[int]) -> SequenceBatch:
        return pair_batch([data.train[i] for i in picks], pad_id)

    stream = PairStream(len(data.train), make_batch, t.micro_batch, t.seed, env.rank, env.world)
    result = train(cfg, env, model, stream, BradleyTerry(), None, source / "tokenizer.json", resume,
                   recipe="reward-model")
    if data.held_out and not result.get("stopped"):
        report["after"] = held_out_accuracy(model, data.held_out, pad_id, t.micro_batch)
        if env.is_main:
            print(
                f"held-out pairs ranked right: {report['after']['accuracy']:.1%} "
                f"(loss {report['after']['loss']:.4f}; log 2 = {math.log(2):.4f} at the start)",
                flush=True,
            )
    if env.is_main:
        atomic_write_json(run_dir / "reward_model.json", report)
    return {**result, **report}
