"""Reinforcement learning from execution: the policy samples programs, their tests are the reward.

Each rollout takes rl.prompts_per_step training tasks, samples rl.samples
completions of each through the engine from the current weights, runs every
program against its task's tests in warm sandbox slots (passed = 1, anything
else = 0: failed asserts, crashes, syntax errors and timeouts are counted
apart), turns rewards into advantages within each task's group, and trains on
the completion tokens with the policy-gradient core (policy_gradient.py) for
rl.updates_per_rollout optimizer steps. Everything else (precision, LoRA,
checkpoints, exact resume, time budgets) is the shared loop's.

What a run leaves in its directory: rollouts.jsonl (per rollout: mean reward
and its spread, share of zero-spread groups, pass rate, outcome counts,
completion lengths, truncations), reward_audit.jsonl (every sampled program
with its outcome, so false positives of weak tests can be read), and rl.json:
the held-out tasks' greedy pass rate before and after.
"""

import json
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from codelm.config import Config, RLConfig
from codelm.errors import UserError
from codelm.inference.engine import Completion, Engine
from codelm.io import atomic_write_json
from codelm.model.llama import Transformer
from codelm.sandbox.supervisor import Sandbox
from codelm.tasks import collection
from codelm.tokenizer import Tokenizer
from codelm.train import metrics, policy_gradient
from codelm.train.execution import check_lengths, completion_program, load_tasks, pass_rate, prompt_ids, sampling
from codelm.train.loop import DistEnv, setup_distributed, start_from, train
from codelm.train.reference import Reference, token_logprobs
from codelm.train.reward_model import load_reward_model, sequences


@dataclass
class RolloutBatch:
    """Rows of prompt + sampled completion; the loss is learned where `mask` is set (the completion's tokens)."""

    inputs: torch.Tensor  # (B, T)
    targets: torch.Tensor  # (B, T)
    mask: torch.Tensor  # (B, T) bool
    advantage: torch.Tensor  # (B,)
    old_logp: torch.Tensor | None  # (B, T) log-probs at rollout time; None: one update per rollout (= logp)
    ref_logp: torch.Tensor | None  # (B, T) under the reference, when a KL term is used

    def to(self, device) -> "RolloutBatch":
        return RolloutBatch(*(t.to(device) if t is not None else None for t in vars(self).values()))

    def rows(self) -> list[dict]:
        """JSON-able rows (a stream's state when it stops between updates on one rollout)."""
        return [{k: (v[i].tolist() if v is not None else None) for k, v in vars(self).items()}
                for i in range(len(self.inputs))]

    @classmethod
    def from_rows(cls, rows: list[dict]) -> "RolloutBatch":
        def stack(key, dtype=torch.float32):
            return None if rows[0][key] is None else torch.tensor([r[key] for r in rows], dtype=dtype)

        return cls(stack("inputs", torch.long), stack("targets", torch.long), stack("mask", torch.bool),
                   stack("advantage"), stack("old_logp"), stack("ref_logp"))


class Rollouts:
    """A BatchStream of rollouts: every `accum * updates` micro batches it samples a new one from the current
    weights. The draw comes from (seed, rollout index); a run stopped between updates on one rollout keeps its
    rows in the state, so a resumed run trains on the same batches."""

    def __init__(self, model: Transformer, tok: Tokenizer, tasks: list[dict], rl: RLConfig, accum: int,
                 sandbox: Sandbox, reference: Reference | None, seed: int, env: DistEnv, run_dir: Path, scorer=None):
        self.model, self.tok, self.tasks, self.rl, self.accum = model, tok, tasks, rl, accum
        self.sandbox, self.reference, self.seed, self.env = sandbox, reference, seed, env
        self.run_dir, self.rollouts, self.served, self.pending = run_dir, 0, 0, []
        self.scorer = scorer  # token-id sequences -> rewards (a reward model), instead of the tests

    def state_dict(self) -> dict:
        return {"rollouts": self.rollouts, "served": self.served, "pending": [b.rows() for b in self.pending]}

    def load_state_dict(self, state: dict):
        self.rollouts, self.served = state["rollouts"], state["served"]
        self.pending = [RolloutBatch.from_rows(rows) for rows in state["pending"]]
        if self.env.is_main:  # records of steps the checkpoint does not hold are redone
            for name in ("rollouts.jsonl", "reward_audit.jsonl"):
                metrics.truncate_metrics(self.run_dir / name, self.served // self.accum)

    def next_batch(self) -> RolloutBatch:
        if not self.pending:
            batches = self.rollout()
            self.pending = [b for _ in range(self.rl.updates_per_rollout) for b in batches]
        self.served += 1
        return self.pending.pop(0)

    def rollout(self) -> list[RolloutBatch]:
        """Sample, execute, score; `accum` micro batches of the rows that carry signal."""
        rl, step = self.rl, self.served // self.accum + 1
        rng = np.random.default_rng([self.seed, self.rollouts])
        self.rollouts += 1
        picks = rng.choice(len(self.tasks), size=rl.prompts_per_step * self.env.world,
                           replace=len(self.tasks) < rl.prompts_per_step * self.env.world)
        tasks = [self.tasks[i] for i in picks[self.env.rank::self.env.world]]
        prompts = [prompt_ids(self.tok, t, rl.chat) for t in tasks]
        params = sampling(rl.max_new_tokens, rl.chat, strategy="sample", temperature=rl.temperature, n=rl.samples,
                          seed=int(rng.integers(2**31)))
        was_training = self.model.training
        groups = Engine(self.model, self.tok).generate(prompts, params)
        self.model.train(was_training)
        samples = [(t, c) for t, group in zip(tasks, groups) for c in group]
        results = self.sandbox.run_many([completion_program(t, c.text, rl.chat) for t, c in samples])
        outcomes = [collection.outcome(r) for r in results]
        if self.scorer is None:
            rewards = torch.tensor([float(o == "passed") for o in outcomes])
        else:  # RLHF: the reward model's score; the tests still run, so the audit shows where the two disagree
            rewards = self.scorer([prompts[i // rl.samples] + c.token_ids for i, (_, c) in enumerate(samples)])
        rewards = rewards.view(len(tasks), rl.samples)
        self.log(step, tasks, samples, results, outcomes, rewards)
        advantage = policy_gradient.advantages(rewards, rl.advantage).flatten()
        keep = ~policy_gradient.zero_spread(rewards) if rl.skip_zero_spread else torch.ones(len(tasks), dtype=bool)
        rows = [(prompts[i // rl.samples], c, float(advantage[i])) for i, (_, c) in enumerate(samples)
                if keep[i // rl.samples] and not (rl.mask_truncated and truncated(c))]
        return [self.batch(rows[k::self.accum]) for k in range(self.accum)]

    def batch(self, rows: list[tuple[list[int], Completion, float]]) -> RolloutBatch:
        """Rows padded to their longest; the mask covers each completion's tokens. No rows: one empty row."""
        if not rows:
            zeros = torch.zeros(1, 1, dtype=torch.long)
            return RolloutBatch(zeros, zeros, zeros.bool(), torch.zeros(1), None, None)
        seqs = [prompt + c.token_ids for prompt, c, _ in rows]
        width = max(len(s) for s in seqs) - 1
        pad = self.tok.eot_id or 0
        ids = torch.full((len(rows), width + 1), pad, dtype=torch.long)
        mask = torch.zeros(len(rows), width, dtype=torch.bool)
        for i, (s, (prompt, _, _)) in enumerate(zip(seqs, rows)):
            ids[i, : len(s)] = torch.tensor(s)
            mask[i, len(prompt) - 1 : len(s) - 1] = True
        inputs, targets = ids[:, :-1], ids[:, 1:]
        advantage = torch.tensor([a for _, _, a in rows], dtype=torch.float32)
        device = next(self.model.parameters()).device
        old = ref = None
        with torch.no_grad():
            if self.rl.updates_per_rollout > 1:
                old = token_logprobs(self.model, inputs.to(device), targets.to(device)).cpu()
            if self.reference is not None:
                ref = self.reference.logprobs(self.model, inputs.to(device), targets.to(device)).cpu()
        return RolloutBatch(inputs, targets, mask, advantage, old, ref)

    def log(self, step: int, tasks, samples, results, outcomes, rewards: torch.Tensor):
        """One progress line, one rollouts.jsonl record and the audit rows of this rollout (main process)."""
        if not self.env.is_main:
            return
        counts = Counter(outcomes)
        lengths = [len(c.token_ids) for _, c in samples]
        spread = policy_gradient.zero_spread(rewards)
        record = {"step": step, "rollout": self.rollouts, "reward_mean": float(rewards.mean()),
                  "reward_std": float(rewards.std()) if rewards.numel() > 1 else 0.0,
                  "zero_spread_groups": float(spread.float().mean()), "pass_rate": counts["passed"] / len(outcomes),
                  "outcomes": {o: counts[o] for o in collection.OUTCOMES},
                  "completion_tokens_mean": float(np.mean(lengths)), "completion_tokens_max": max(lengths),
                  "truncated": sum(truncated(c) for _, c in samples)}
        with open(self.run_dir / "rollouts.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        with open(self.run_dir / "reward_audit.jsonl", "a") as f:
            for (task, c), result, o, reward in zip(samples, results, outcomes, rewards.flatten().tolist()):
                f.write(json.dumps({"step": step, "task_id": task["task_id"], "outcome": o, "reward": reward,
                                    "detail": result.detail[:300], "completion": c.text}) + "\n")
        print(f"rollout {self.rollouts} (step {step}): reward {record['reward_mean']:.3f} ± {record['reward_std']:.3f}"
              f" | zero-spread groups {int(spread.sum())}/{len(spread)} | "
              + " ".join(f"{o} {n}" for o, n in record["outcomes"].items() if n)
              + f" | completion {record['completion_tokens_mean']:.0f} tokens, {record['truncated']} truncated",
              flush=True)


def truncated(c: Completion) -> bool:
    return c.finish_reason == "length"


class PolicyGradient:
    """The Objective: the clipped surrogate (plus KL) aggregated as rl.aggregation says, with the clip fraction,
    the policy's entropy and the KL as metrics."""

    def __init__(self, rl: RLConfig):
        self.rl = rl
        self.metric_kind = "sequence" if rl.aggregation == "constant" else rl.aggregation  # a mean, not a sum / L

    def units(self, batch: RolloutBatch) -> int:
        return policy_gradient.units(batch.mask, self.rl.aggregation)

    def __call__(self, model, batch: RolloutBatch):
        rl = self.rl
        logp_all = torch.log_softmax(model(batch.inputs).float(), dim=-1)
        logp = logp_all.gather(-1, batch.targets[..., None])[..., 0]
        old = batch.old_logp if batch.old_logp is not None else logp.detach()
        out = policy_gradient.token_losses(logp, old, batch.advantage, rl.epsilon_low, rl.epsilon_high,
                                           batch.ref_logp, rl.kl, rl.kl_coef)
        loss = policy_gradient.aggregate(out.loss, batch.mask, rl.aggregation, rl.max_new_tokens)

        def mean(values: torch.Tensor) -> torch.Tensor:
            return policy_gradient.aggregate(values.detach().float(), batch.mask, self.metric_kind, rl.max_new_tokens)

        found = {"clip_fraction": mean(out.clipped), "entropy": mean(-(logp_all.exp() * logp_all).sum(-1))}
        if out.kl is not None:
            found["kl"] = mean(out.kl)
        return loss, found


def reward_scorer(path: str, tok: Tokenizer):
    """A reward model as a function of whole token-id sequences (it must share the policy's tokenizer)."""
    model, _ = load_reward_model(path, tok)
    model.eval()

    @torch.no_grad()
    def score(rows: list[list[int]]) -> torch.Tensor:
        batch = sequences(rows, tok.eot_id or 0)
        return model.rewards(batch.inputs, batch.last)

    return score


def validate_settings(rl: RLConfig):
    checks = [(rl.samples >= 2, "rl.samples: at least 2 (advantages compare samples of one task)"),
              (rl.prompts_per_step >= 1 and rl.updates_per_rollout >= 1, "rl.prompts_per_step, "
               "rl.updates_per_rollout: at least 1"),
              (0 <= rl.held_out < 1, "rl.held_out: from 0 to below 1"),
              (rl.epsilon_low >= 0 and rl.epsilon_high >= 0, "rl.epsilon_low, rl.epsilon_high: not negative")]
    for ok, text in checks:
        if not ok:
            raise UserError(f"bad setting: {text}")


def rl(cfg: Config, resume: bool = False) -> dict:
    env = setup_distributed(cfg.train.device)
    r, t = cfg.rl, cfg.train
    validate_settings(r)
    model, tok, source = start_from(cfg, "rl")
    train_tasks, held_out = load_tasks(r.tasks, r.held_out, r.workers, env)
    held_out = held_out[: r.held_out_limit]
    longest = check_lengths(train_tasks, tok, r.chat, r.max_new_tokens, model.config.max_seq_len) + r.max_new_tokens
    check_lengths(held_out, tok, r.chat, r.max_new_tokens, model.config.max_seq_len)
    cfg.data.seq_len = min(model.config.max_seq_len, 64 * math.ceil(longest / 64))  # the loop's nominal row length
    accum = math.ceil(r.prompts_per_step * r.samples / t.micro_batch)
    t.batch_tokens = accum * t.micro_batch * env.world * cfg.data.seq_len
    run_dir = Path(t.out_dir)
    reference = Reference(model, tok, lora=cfg.lora.r > 0) if r.kl != "none" else None
    with Sandbox(r.workers) as sandbox:
        report_path = run_dir / "rl.json"
        report = json.loads(report_path.read_text()) if resume and report_path.is_file() else {}
        if "before" not in report and held_out:
            report["before"] = pass_rate(model, tok, held_out, r.chat, r.max_new_tokens, sandbox)
            if env.is_main:
                print(f"held-out pass@1 before: {report['before']['pass_rate']:.1%} of {len(held_out)} tasks",
                      flush=True)
                atomic_write_json(report_path, report)
        stream = Rollouts(model, tok, train_tasks, r, accum, sandbox, reference, t.seed, env, run_dir,
                          reward_scorer(r.reward_model, tok) if r.reward_model else None)
        result = train(cfg, env, model, stream, PolicyGradient(r), None, source / "tokenizer.json", resume, recipe="rl")
        if held_out and not result.get("stopped"):
            report["after"] = pass_rate(model, tok, held_out, r.chat, r.max_new_tokens, sandbox)
            if env.is_main:
                print(f"held-out pass@1 after: {report['after']['pass_rate']:.1%} "
                      f"(before: {report['before']['pass_rate']:.1%})", flush=True)
    if env.is_main:
        atomic_write_json(report_path, report)
    return {**result, **report}
