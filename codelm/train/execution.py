"""Asking a policy tasks and running its programs: what RL, DPO from execution and reward-model pairs share.

A task (codelm.tasks.collection) is asked as its chat request through the
template (chat models) or as its prompt to continue, with HumanEval's stop
sequences; the reply becomes a program by HumanEval's rule and runs against
the task's tests in the sandbox.
"""

from collections import Counter

import torch

from codelm.chat import encode_chat
from codelm.config import SamplingParams
from codelm.data.decontam import decontaminate_tasks
from codelm.errors import UserError
from codelm.inference.engine import Engine
from codelm.model.llama import Transformer
from codelm.sandbox.supervisor import Sandbox
from codelm.tasks import collection, humaneval
from codelm.tokenizer import Tokenizer
from codelm.train.loop import DistEnv


def prompt_ids(tok: Tokenizer, task: dict, chat: bool) -> list[int]:
    """A task as the model is asked it: its chat request through the template, or its prompt to continue."""
    if chat:
        return encode_chat(tok, collection.messages(task), tok.chat_template)
    return [*tok.prefix_ids, *tok.encode(humaneval.base_prompt(task, []))]


def completion_program(task: dict, text: str, chat: bool) -> tuple[str, str]:
    return collection.program(task, humaneval.chat_completion(task, text) if chat else text)


def sampling(max_new_tokens: int, chat: bool, **kw) -> SamplingParams:
    return SamplingParams(max_new_tokens=max_new_tokens, stop=[] if chat else humaneval.STOP_SEQUENCES, **kw)


def check_lengths(tasks: list[dict], tok: Tokenizer, chat: bool, max_new_tokens: int, context: int) -> int:
    """The longest prompt's length in tokens; a prompt that leaves no room for max_new_tokens in the context is
    an error naming it, not a silent crop."""
    longest = 0
    for task in tasks:
        length = len(prompt_ids(tok, task, chat))
        if length + max_new_tokens > context:
            raise UserError(f"task {task['task_id']}: its prompt is {length} tokens; with max_new_tokens="
                            f"{max_new_tokens} that exceeds the model's context of {context}")
        longest = max(longest, length)
    return longest


@torch.no_grad()
def pass_rate(model: Transformer, tok: Tokenizer, tasks: list[dict], chat: bool, max_new_tokens: int,
              sandbox: Sandbox) -> dict:
    """Greedy pass@1 over tasks and the outcome counts."""
    was_training = model.training
    groups = Engine(model, tok).generate([prompt_ids(tok, t, chat) for t in tasks], sampling(max_new_tokens, chat))
    model.train(was_training)
    results = sandbox.run_many([completion_program(t, c.text, chat) for t, (c,) in zip(tasks, groups)])
    counts = Counter(collection.outcome(r) for r in results)
    return {"tasks": len(tasks), "pass_rate": counts["passed"] / max(len(tasks), 1), "outcomes": dict(counts)}


def load_tasks(source: str, held_out: float, workers: int, env: DistEnv) -> tuple[list[dict], list[dict]]:
    """(train, held out) tasks, decontaminated against HumanEval and validated against their references."""
    tasks, untested = collection.load(source)
    tasks, contaminated = decontaminate_tasks(tasks)
    collection.validate(tasks, workers)
    train_tasks, held = collection.split(tasks, held_out)
    if not train_tasks:
        raise UserError(f"no training tasks in {source} (a held-out share of {held_out} holds out all of them)")
    if env.is_main:
        print(f"tasks {source}: {len(train_tasks)} to train on, {len(held)} held out; {untested} without tests "
              f"and {len(contaminated)} overlapping HumanEval dropped; every reference solution passes its tests",
              flush=True)
    return train_tasks, held
