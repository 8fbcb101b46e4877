"""Preference pairs for DPO and the reward model: read from a file or built by execution, split, streamed.

A pair is a prompt's token ids and two completions' (their end included). From a
JSONL file: `prompt` as text (continued) or chat messages (rendered with the
checkpoint's template), `chosen` and `rejected` as text or an assistant message.
From tasks with tests (`pairs.from_tasks`): the policy samples pairs.samples
programs per task, and each task with a passing and a failing program gives one
pair (OUT/pairs.jsonl lists them to read). Pairs are held out by a hash of
their origin: for pairs from tasks that is the tasks' own split, so the
held-out pairs are exactly those of the held-out tasks.
"""

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from codelm.chat import encode_chat, encode_conversation
from codelm.config import Config, PairsConfig
from codelm.errors import UserError
from codelm.inference.engine import Engine
from codelm.io import atomic_write_bytes, jsonl_rows
from codelm.model.llama import Transformer
from codelm.sandbox.supervisor import Sandbox
from codelm.tasks import collection
from codelm.tokenizer import Tokenizer
from codelm.train.execution import completion_program, load_tasks, pass_rate, prompt_ids, sampling
from codelm.train.loop import DistEnv, accumulation_steps


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
    pairs = []
    for where, row in jsonl_rows(path, "preference pairs"):
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


def pairs_from_execution(model: Transformer, tok: Tokenizer, tasks: list[dict], p: PairsConfig, sandbox: Sandbox,
                         seed: int, out: Path) -> list[Pair]:
    """One pair per task where the policy's samples both pass and fail: the first passing program is chosen, the
    first failing one rejected. The pairs are written to `out` as JSONL (prompt, chosen, rejected, outcomes)."""
    prompts = [prompt_ids(tok, t, p.chat) for t in tasks]
    params = sampling(p.max_new_tokens, p.chat, strategy="sample", temperature=p.temperature, n=p.samples, seed=seed)
    groups = Engine(model, tok).generate(prompts, params)
    model.train()
    programs = [completion_program(t, c.text, p.chat) for t, group in zip(tasks, groups) for c in group]
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
          f"(of {p.samples}); written to {out}", flush=True)
    if not pairs:
        raise UserError(f"no task of {p.from_tasks} gave both a passing and a failing sample: raise pairs.samples or "
                        "pairs.temperature, or use easier tasks")
    return pairs


def split_pairs(pairs: list[Pair], fraction: float) -> tuple[list[Pair], list[Pair]]:
    held = [collection.is_held_out({"task_id": p.where}, fraction) for p in pairs]
    return [p for p, h in zip(pairs, held) if not h], [p for p, h in zip(pairs, held) if h]


@dataclass
class PreferenceData:
    """What a preference recipe trains on: pairs split in two, and the held-out tasks (pairs from execution) with
    their greedy pass@1 before training."""

    train: list[Pair]
    held_out: list[Pair]
    held_tasks: list[dict] = field(default_factory=list)
    report: dict = field(default_factory=dict)


def gather_pairs(cfg: Config, model: Transformer, tok: Tokenizer, env: DistEnv, run_dir: Path) -> PreferenceData:
    """cfg.pairs' pairs, checked against the context, split, and cfg.data.seq_len / train.batch_tokens /
    max_steps set from them (pairs.per_step pairs a step, train.micro_batch pairs a micro batch)."""
    p, t = cfg.pairs, cfg.train
    if bool(p.file) == bool(p.from_tasks):
        raise UserError("give preference pairs (--pairs FILE.jsonl) or tasks to build them from (--from-tasks)")
    data = PreferenceData([], [])
    if p.file:
        pairs = read_pairs(p.file, tok)
    else:
        tasks, data.held_tasks = load_tasks(p.from_tasks, p.val_fraction, cfg.pairs.workers, env)
        with Sandbox(cfg.pairs.workers) as sandbox:
            pairs = pairs_from_execution(model, tok, tasks + data.held_tasks, p, sandbox, t.seed,
                                         run_dir / "pairs.jsonl")
            if data.held_tasks:
                data.report["pass_before"] = pass_rate(model, tok, data.held_tasks, p.chat, p.max_new_tokens, sandbox)
    longest = max(len(pair.prompt) + max(len(pair.chosen), len(pair.rejected)) for pair in pairs)
    if longest > model.config.max_seq_len:
        where = next(pair.where for pair in pairs if len(pair.prompt) + max(len(pair.chosen), len(pair.rejected))
                     == longest)
        raise UserError(f"{where}: the pair is {longest} tokens, longer than the model's context "
                        f"({model.config.max_seq_len}); nothing is cropped silently")
    data.train, data.held_out = split_pairs(pairs, p.val_fraction)
    if not data.train:
        raise UserError(f"pairs.val_fraction={p.val_fraction} holds out every pair")
    cfg.data.seq_len = longest  # the loop's nominal row length
    rows_per_micro = t.micro_batch * env.world
    t.batch_tokens = math.ceil(p.per_step / rows_per_micro) * rows_per_micro * cfg.data.seq_len
    if not (t.max_steps or t.max_minutes):
        per_step = accumulation_steps(cfg, env.world) * rows_per_micro
        t.max_steps = max(1, math.ceil(p.epochs * len(data.train) / per_step))
    return data


def held_out_pass_rate(cfg: Config, model: Transformer, tok: Tokenizer, data: PreferenceData, env: DistEnv):
    """After training: the held-out tasks' greedy pass@1 beside its value before, in data.report."""
    with Sandbox(cfg.pairs.workers) as sandbox:
        data.report["pass_after"] = pass_rate(model, tok, data.held_tasks, cfg.pairs.chat, cfg.pairs.max_new_tokens,
                                              sandbox)
    if env.is_main:
        print(f"held-out tasks' greedy pass@1: {data.report['pass_before']['pass_rate']:.1%} before, "
              f"{data.report['pass_after']['pass_rate']:.1%} after", flush=True)


@torch.no_grad()
def held_out_ranking(model: torch.nn.Module, count: int, batch_pairs: int, score) -> dict:
    """Mean loss over `count` held-out pairs and the share ranked right; score(start, end) gives the per-pair losses
    and metrics (with "accuracy") of pairs start..end."""
    was_training = model.training
    model.eval()
    losses, correct = [], []
    for start in range(0, count, batch_pairs):
        loss, found = score(start, min(start + batch_pairs, count))
        losses += loss.tolist()
        correct += found["accuracy"].tolist()
    model.train(was_training)
    return {"pairs": count, "loss": float(np.mean(losses)), "accuracy": float(np.mean(correct))}


class PairStream:
    """A BatchStream over `count` pairs: a fresh shuffle per epoch from the seed, make_batch(indices) builds a micro
    batch of this process's share; state is (epoch, position)."""

    def __init__(self, count: int, make_batch, batch_pairs: int, seed: int, rank: int = 0, world: int = 1):
        self.count, self.make_batch, self.batch_pairs = count, make_batch, batch_pairs
        self.seed, self.rank, self.world = seed, rank, world
        self.epoch, self.position = 0, 0

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict):
        self.epoch, self.position = state["epoch"], state["position"]

    def next_batch(self):
        order = np.random.default_rng([self.seed, self.epoch]).permutation(self.count)
        take = self.batch_pairs * self.world
        picks = [int(order[(self.position + k) % self.count]) for k in range(take)][self.rank::self.world]
        self.position += take
        if self.position >= self.count:
            self.epoch, self.position = self.epoch + 1, 0
        return self.make_batch(picks)
