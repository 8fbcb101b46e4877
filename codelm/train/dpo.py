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

Pairs come from a JSONL file (`prompt` as text or chat messages; `chosen` and
`rejected` as text or an assistant message), or from execution (`dpo.from_tasks`):
the policy samples dpo.samples programs per task, and each task with a passing
and a failing program gives one pair (written to OUT/pairs.jsonl to read).
"""

import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from codelm import checkpoint as ckpt
from codelm.chat import encode_chat, encode_conversation
from codelm.config import Config, DPOConfig
from codelm.data.loader import IGNORE
from codelm.errors import UserError
from codelm.inference.engine import Engine
from codelm.io import atomic_write_bytes, atomic_write_json
from codelm.model.llama import Transformer
from codelm.sandbox.supervisor import Sandbox
from codelm.tasks import collection
from codelm.tokenizer import Tokenizer
from codelm.train.loop import DistEnv, accumulation_steps, setup_distributed, train
from codelm.train.reference import Reference, token_logprobs
from codelm.train.rl import completion_program, load_tasks, pass_rate, prompt_ids, sampling

LOSSES = ("sigmoid", "ipo")
CACHE = Path(os.environ.get("CODELM_CACHE", Path.home() / ".cache" / "codelm")) / "dpo-reference"


@dataclass
class Pair:
    prompt: list[int]
    chosen: list[int]  # completion ids, its end (end of text or of turn) included
    rejected: list[int]
    where: str  # file:line or task id, for errors


def _text(value, where: str, key: str) -> str:
    """A completion given as text, or as an assistant message (or a one-message list of it, TRL's chat shape)."""
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if isinstance(value, dict) and value.get("role") == "assistant" and isinstance(value.get("content"), str):
        return value["content"]
    if isinstance(value, str):
        return value
    raise UserError(f"{where}: '{key}' must be text or an assistant message")


def completion_ids(tok: Tokenizer, prompt, text: str, template: str | None) -> tuple[list[int], list[int]]:
    """(prompt ids, completion ids) of a text prompt continued by text, or of a chat answered by text."""
    if isinstance(prompt, list):
        head = encode_chat(tok, prompt, template)
        ids, _ = encode_conversation(tok, [*prompt, {"role": "assistant", "content": text}], template)
        if ids[: len(head)] != head:
            raise UserError("the chat template renders a conversation's start differently from its generation "
                            "prompt, so a reply's tokens cannot be told apart")
        return head, ids[len(head):]
    end = [tok.eot_id] if tok.eot_id is not None else []
    return [*tok.prefix_ids, *tok.encode(prompt)], [*tok.encode(text), *end]


def read_pairs(path: str | Path, tok: Tokenizer) -> list[Pair]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"preference pairs not found: {path}")
    pairs = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{where} is not valid JSON: {e}") from None
        if not isinstance(row, dict) or not {"prompt", "chosen", "rejected"} <= row.keys():
            raise UserError(f"{where}: a pair needs 'prompt', 'chosen' and 'rejected'")
        prompt = row["prompt"]
        if not isinstance(prompt, (str, list)):
            raise UserError(f"{where}: 'prompt' must be text or a list of chat messages")
        head, chosen = completion_ids(tok, prompt, _text(row["chosen"], where, "chosen"), tok.chat_template)
        _, rejected = completion_ids(tok, prompt, _text(row["rejected"], where, "rejected"), tok.chat_template)
        pairs.append(Pair(head, chosen, rejected, where))
    if not pairs:
        raise UserError(f"{path} holds no pairs")
    return pairs


def pairs_from_execution(model: Transformer, tok: Tokenizer, tasks: list[dict], d: DPOConfig, sandbox: Sandbox,
                         seed: int, out: Path) -> list[Pair]:
    """One pair per task where the policy's samples both pass and fail: the first passing program is chosen, the
    first failing one rejected. The pairs are written to `out` as JSONL (prompt, chosen, rejected, outcomes)."""
    prompts = [prompt_ids(tok, t, d.chat) for t in tasks]
    params = sampling(d.max_new_tokens, d.chat, strategy="sample", temperature=d.temperature, n=d.samples, seed=seed)
    groups = Engine(model, tok).generate(prompts, params)
    model.train()
    programs = [completion_program(t, c.text, d.chat) for t, group in zip(tasks, groups) for c in group]
    outcomes = iter(collection.outcome(r) for r in sandbox.run_many(programs, progress="executing samples"))
    pairs, rows = [], []
    for task, prompt, group in zip(tasks, prompts, groups):
        scored = [(c, next(outcomes)) for c in group]
        good = next((c for c, o in scored if o == "passed"), None)
        bad, why = next(((c, o) for c, o in scored if o != "passed"), (None, None))
        if good is None or bad is None:
            continue
        pairs.append(Pair(prompt, good.token_ids, bad.token_ids, task["task_id"]))
        rows.append({"task_id": task["task_id"], "prompt": tok.decode(prompt), "chosen": good.text,
                     "rejected": bad.text, "rejected_outcome": why})
    atomic_write_bytes(out, (json.dumps(r).encode() + b"\n" for r in rows))
    print(f"pairs from execution: {len(pairs)} of {len(tasks)} tasks had a passing and a failing sample "
          f"(of {d.samples}); written to {out}", flush=True)
    if not pairs:
        raise UserError(f"no task of {d.from_tasks} gave both a passing and a failing sample: raise dpo.samples or "
                        "dpo.temperature, or use easier tasks")
    return pairs


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
        raise UserError(f"dpo.loss must be one of {', '.join(LOSSES)}; got {kind!r}")
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


class PairStream:
    """A BatchStream over pairs: a fresh shuffle per epoch from the seed; state is (epoch, position)."""

    def __init__(self, pairs: list[Pair], reference: torch.Tensor, batch_pairs: int, pad_id: int, seed: int,
                 rank: int = 0, world: int = 1):
        self.pairs, self.reference, self.batch_pairs, self.pad_id = pairs, reference, batch_pairs, pad_id
        self.seed, self.rank, self.world = seed, rank, world
        self.epoch, self.position = 0, 0

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict):
        self.epoch, self.position = state["epoch"], state["position"]

    def next_batch(self) -> PairBatch:
        order = np.random.default_rng([self.seed, self.epoch]).permutation(len(self.pairs))
        take = self.batch_pairs * self.world
        picks = [int(order[(self.position + k) % len(order)]) for k in range(take)][self.rank::self.world]
        self.position += take
        if self.position >= len(order):
            self.epoch, self.position = self.epoch + 1, 0
        return collate([self.pairs[i] for i in picks], self.pad_id, self.reference[picks])


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


def split_pairs(pairs: list[Pair], fraction: float) -> tuple[list[Pair], list[Pair]]:
    held = [collection.is_held_out({"task_id": p.where}, fraction) for p in pairs]
    return [p for p, h in zip(pairs, held) if not h], [p for p, h in zip(pairs, held) if h]


@torch.no_grad()
def held_out_accuracy(model: Transformer, pairs: list[Pair], reference: torch.Tensor, d: DPOConfig, pad_id: int,
                      batch_pairs: int) -> dict:
    """Mean loss and the share of held-out pairs whose implicit reward ranks chosen above rejected."""
    was_training = model.training
    model.eval()
    losses, correct = [], []
    for start in range(0, len(pairs), batch_pairs):
        batch = collate(pairs[start : start + batch_pairs], pad_id, reference[start : start + batch_pairs])
        loss, found = dpo_loss(sequence_logprobs(model, batch), batch.reference, d.beta, d.loss)
        losses += loss.tolist()
        correct += found["accuracy"].tolist()
    model.train(was_training)
    return {"pairs": len(pairs), "loss": float(np.mean(losses)), "accuracy": float(np.mean(correct))}


def dpo(cfg: Config, resume: bool = False) -> dict:
    env: DistEnv = setup_distributed(cfg.train.device)
    d, t = cfg.dpo, cfg.train
    if d.loss not in LOSSES or d.beta <= 0:
        raise UserError(f"dpo.loss must be one of {', '.join(LOSSES)} and dpo.beta above 0")
    if not t.init_from:
        raise UserError("dpo starts from a trained model: give --init-from CHECKPOINT (train.init_from)")
    if bool(d.pairs) == bool(d.from_tasks):
        raise UserError("give preference pairs (--pairs FILE.jsonl) or tasks to build them from (--from-tasks)")
    torch.manual_seed(t.seed)
    model, tok, source = ckpt.load_model(t.init_from)
    model.train()
    cfg.model = model.config
    run_dir = Path(t.out_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    pad_id = tok.eot_id if tok.eot_id is not None else 0
    held_tasks, report = [], {}
    if d.pairs:
        pairs = read_pairs(d.pairs, tok)
    else:  # pairs of held-out tasks are the held-out pairs: split_pairs uses the tasks' split
        tasks, held_tasks = load_tasks(d.from_tasks, d.val_fraction, cfg.rl.workers, env)
        with Sandbox(cfg.rl.workers) as sandbox:
            pairs = pairs_from_execution(model, tok, tasks + held_tasks, d, sandbox, t.seed, run_dir / "pairs.jsonl")
            if held_tasks:
                report["pass_before"] = pass_rate(model, tok, held_tasks, d.chat, d.max_new_tokens, sandbox)
    longest = max(max(len(p.prompt) + len(p.chosen), len(p.prompt) + len(p.rejected)) for p in pairs)
    if longest > model.config.max_seq_len + 1:
        where = next(p.where for p in pairs if len(p.prompt) + max(len(p.chosen), len(p.rejected)) == longest)
        raise UserError(f"{where}: the pair is {longest} tokens, longer than the model's context "
                        f"({model.config.max_seq_len}); nothing is cropped silently")
    cfg.data.seq_len = min(model.config.max_seq_len, longest)  # the loop's nominal row length
    rows_per_micro = t.micro_batch * env.world
    t.batch_tokens = math.ceil(d.pairs_per_step / rows_per_micro) * rows_per_micro * cfg.data.seq_len
    if d.reference:
        score = Reference(model, tok, d.reference).logprobs
    else:  # the policy before its first step is the reference (with LoRA: its base, the adapters not yet added)
        def score(policy, inputs, targets):
            return token_logprobs(policy, inputs, targets)
    weights = weights_digest(d.reference or t.init_from)
    values, _ = reference_logprobs(score, model, pairs, weights, pad_id, t.micro_batch,
                                   print if env.is_main else (lambda *a: None))
    index = {id(p): i for i, p in enumerate(pairs)}
    train_pairs, held = split_pairs(pairs, d.val_fraction)
    if not train_pairs:
        raise UserError(f"dpo.val_fraction={d.val_fraction} holds out every pair")
    train_ref = values[[index[id(p)] for p in train_pairs]]
    held_ref = values[[index[id(p)] for p in held]]
    if not (t.max_steps or t.max_minutes):
        pairs_per_step = accumulation_steps(cfg, env.world) * t.micro_batch * env.world
        t.max_steps = max(1, math.ceil(d.epochs * len(train_pairs) / pairs_per_step))
    if env.is_main:
        print(f"dpo: {len(train_pairs)} pairs to train on, {len(held)} held out | {d.loss} loss, beta {d.beta:g}",
              flush=True)
    stream = PairStream(train_pairs, train_ref, t.micro_batch, pad_id, t.seed, env.rank, env.world)
    result = train(cfg, env, model, stream, DPO(d.beta, d.loss), None, source / "tokenizer.json", resume)
    if held_tasks and not result.get("stopped"):
        with Sandbox(cfg.rl.workers) as sandbox:
            report["pass_after"] = pass_rate(model, tok, held_tasks, d.chat, d.max_new_tokens, sandbox)
        if env.is_main:
            print(f"held-out tasks' greedy pass@1: {report['pass_before']['pass_rate']:.1%} before, "
                  f"{report['pass_after']['pass_rate']:.1%} after", flush=True)
    if held and not result.get("stopped"):
        report["after"] = held_out_accuracy(model, held, held_ref, d, pad_id, t.micro_batch)
        if env.is_main:
            print(f"held-out pairs: {report['after']['accuracy']:.1%} ranked right by the implicit reward, loss "
                  f"{report['after']['loss']:.4f} (log 2 = {math.log(2):.4f} at the start)", flush=True)
    if env.is_main:
        atomic_write_json(run_dir / "dpo.json", report)
    return {**result, **report}
