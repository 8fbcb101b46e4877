"""SFT data: chat examples from JSONL, their loss masks, and rows packed without cropping.

One JSON object per line, in any of three shapes (a "system" string may sit beside the last two):
    {"messages": [{"role": "system"|"user"|"assistant", "content": "..."}, ...]}   (OpenAI / HF)
    {"prompt": "...", "completion": "..."}
    {"instruction": "...", "response": "..."}
Each becomes a conversation rendered by the model's own chat template through codelm.chat, the code the
engine uses to prompt it, so training and inference tokenize a chat the same way. Only the assistant's
tokens are learned (the mask from chat.encode_conversation).

Packing puts whole examples into rows (best fit: each goes into the fullest row that still has room), pads
the rest, and never crops: an example longer than a row is dropped and counted. Attention stays within an
example (doc_ids) and positions restart at each example, as in pretraining's packed documents.
"""

import hashlib
from bisect import bisect_left, insort
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from codelm.chat import encode_conversation
from codelm.data.loader import IGNORE, Batch
from codelm.errors import UserError
from codelm.io import jsonl_rows
from codelm.tokenizer import Tokenizer

ROLES = ("system", "user", "assistant")


def conversation(row, where: str) -> list[dict]:
    """A row in any accepted shape as messages; a UserError naming `where` (file:line) if it is none of them."""
    if not isinstance(row, dict):
        raise UserError(f"{where}: expected a JSON object, got {type(row).__name__}")
    if "messages" in row:
        messages = row["messages"]
        if not isinstance(messages, list) or not messages:
            raise UserError(f"{where}: 'messages' must be a non-empty list")
    else:
        pair = next(((q, a) for q, a in (("prompt", "completion"), ("instruction", "response"))
                     if q in row and a in row), None)
        if pair is None:
            raise UserError(f"{where}: expected 'messages', 'prompt'/'completion' or 'instruction'/'response' "
                            f"keys, got {sorted(row)}")
        system = [{"role": "system", "content": row["system"]}] if row.get("system") else []
        messages = system + [{"role": "user", "content": row[pair[0]]}, {"role": "assistant", "content": row[pair[1]]}]
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise UserError(f"{where}: message {i} has role {m.get('role') if isinstance(m, dict) else None!r}, "
                            f"expected one of {', '.join(ROLES)}")
        if not isinstance(m.get("content"), str):
            raise UserError(f"{where}: message {i} ({m['role']}) has no text 'content'")
        if m["role"] == "assistant" and not m["content"].strip():
            raise UserError(f"{where}: message {i} is an empty assistant turn")
    if not any(m["role"] == "assistant" for m in messages):
        raise UserError(f"{where}: no assistant message to learn from")
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def read_conversations(path: str | Path) -> list[tuple[str, list[dict]]]:
    """(file:line, messages) for every non-blank line of a JSONL file."""
    found = [(where, conversation(row, where)) for where, row in jsonl_rows(path, "SFT data")]
    if not found:
        raise UserError(f"{path}: no examples")
    return found


@dataclass
class Example:
    ids: np.ndarray  # int64 token ids of the whole conversation
    learn: np.ndarray  # bool, per token: the model learns to write it (assistant text and its end of turn)
    where: str  # file:line, for errors and provenance
    messages: list[dict] = field(default_factory=list)  # the conversation, for recipes that re-answer its prompts


def encode_examples(conversations: list[tuple[str, list[dict]]], tok: Tokenizer, template: str | None) -> list[Example]:
    """Tokenize and mask every conversation; an example whose mask is all off or all on is an error naming it
    (an all-off mask would train on nothing; all-on means the template marked no prompt at all)."""
    examples = []
    for where, messages in conversations:
        try:
            ids, learn = encode_conversation(tok, messages, template)
        except UserError as e:
            raise UserError(f"{where}: {e}") from None
        if not any(learn):
            raise UserError(f"{where}: the chat template left no assistant token to learn")
        if all(learn):
            raise UserError(f"{where}: every token is marked as the assistant's: the chat template marks no prompt")
        examples.append(Example(np.asarray(ids, dtype=np.int64), np.asarray(learn, dtype=bool), where, messages))
    return examples


def split_held_out(examples: list[Example], fraction: float) -> tuple[list[Example], list[Example]]:
    """(train, held out) by a hash of each example's tokens: the same split on every run and machine, and
    duplicates of one example land on the same side."""
    held = [hashlib.blake2b(e.ids.tobytes(), digest_size=8).digest()[0] / 256 < fraction for e in examples]
    return [e for e, h in zip(examples, held) if not h], [e for e, h in zip(examples, held) if h]


def pack(lengths: list[int], capacity: int) -> list[list[int]]:
    """Indices of items per row, best fit in the given order: each goes into the open row with the least room
    that still holds it. Items longer than capacity are left out (the caller counts them)."""
    rows: list[list[int]] = []
    room: list[tuple[int, int]] = []  # (space left, row), sorted
    for i, n in enumerate(lengths):
        if n > capacity:
            continue
        at = bisect_left(room, (n, -1))
        if at < len(room):
            left, r = room.pop(at)
        else:
            left, r = capacity, len(rows)
            rows.append([])
        rows[r].append(i)
        if left - n > 0:
            insort(room, (left - n, r))
    return rows


class PackedExamples:
    """Micro batches of packed SFT rows: endless and shuffled (training), or one ordered pass (passes=1,
    held-out evaluation). Each epoch packs a fresh shuffle drawn from (seed, epoch), so the stream resumes
    from (epoch, row) alone. With several processes each keeps its slice of every global micro batch."""

    def __init__(self, examples: list[Example], seq_len: int, batch_rows: int, pad_id: int, seed: int = 0,
                 shuffle: bool = True, passes: int | None = None, rank: int = 0, world: int = 1):
        self.examples, self.seq_len, self.batch_rows, self.pad_id = examples, seq_len, batch_rows, pad_id
        self.seed, self.shuffle, self.passes, self.rank, self.world = seed, shuffle, passes, rank, world
        self.dropped = sum(len(e.ids) > seq_len + 1 for e in examples)  # a row holds seq_len + 1 tokens
        if self.dropped == len(examples):
            raise UserError(f"every SFT example is longer than data.seq_len + 1 = {seq_len + 1} tokens")
        self.epoch, self.row = 0, 0
        self._epoch: tuple[int, list[list[int]]] | None = None

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "row": self.row}

    def load_state_dict(self, state: dict):
        self.epoch, self.row = state["epoch"], state["row"]

    def rows_per_epoch(self) -> int:
        """Rows of a packed epoch (of the first: later shuffles pack within a row or two of it)."""
        return len(self._rows(0))

    def _rows(self, epoch: int) -> list[list[int]]:
        if self._epoch is None or self._epoch[0] != epoch:
            order = np.arange(len(self.examples))
            if self.shuffle:
                order = np.random.default_rng([self.seed, epoch]).permutation(order)
            rows = [[int(order[i]) for i in row]
                    for row in pack([len(self.examples[i].ids) for i in order], self.seq_len + 1)]
            if self.shuffle:  # best fit fills early rows with long examples: spread them over the epoch
                rows = [rows[i] for i in np.random.default_rng([self.seed, epoch, 1]).permutation(len(rows))]
            self._epoch = (epoch, rows)
        return self._epoch[1]

    def _row(self) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """(tokens, learned, example number) of the next row, seq_len + 1 long; None after the last pass."""
        if self.row == len(self._rows(self.epoch)):
            self.epoch, self.row = self.epoch + 1, 0
        if self.passes is not None and self.epoch >= self.passes:
            return None
        members = [self.examples[i] for i in self._rows(self.epoch)[self.row]]
        self.row += 1
        ids = np.full(self.seq_len + 1, self.pad_id, dtype=np.int64)
        learn = np.zeros(self.seq_len + 1, dtype=bool)
        doc = np.full(self.seq_len + 1, len(members), dtype=np.int64)  # padding: a document of its own
        at = 0
        for number, e in enumerate(members):
            ids[at : at + len(e.ids)], learn[at : at + len(e.ids)], doc[at : at + len(e.ids)] = e.ids, e.learn, number
            at += len(e.ids)
        return ids, learn, doc

    def next_batch(self) -> Batch | None:
        rows = [row for _ in range(self.batch_rows * self.world) if (row := self._row()) is not None]
        rows = rows[self.rank * self.batch_rows : (self.rank + 1) * self.batch_rows]
        if not rows:
            return None
        ids, learn, doc = (torch.from_numpy(np.stack(column)) for column in zip(*rows))
        same_example = doc[:, 1:] == doc[:, :-1]  # never predict the next example's first token
        targets = torch.where(learn[:, 1:] & same_example, ids[:, 1:], IGNORE)
        return Batch(ids[:, :-1].clone(), targets, doc[:, :-1].clone())

    def __iter__(self):
        while (batch := self.next_batch()) is not None:
            yield batch
