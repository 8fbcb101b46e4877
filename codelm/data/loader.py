"""Pack documents into fixed-length rows for training and evaluation.

A stream is `<|endoftext|> doc <|endoftext|> doc ...`. Each document starts
with <|endoftext|>, so that token ends the previous document (as a target) and
opens the next one (as an input). A row is T+1 consecutive stream tokens:
inputs are the first T, targets the last T, and the next row starts T later.
`doc_ids` numbers the documents within each row, for attention masking and
per-document positions.

Training uses many streams, one per row of an optimizer step: stream s walks
documents s, s+S, s+2S, ... in an order shuffled per epoch. Rows of one batch
then come from different files; a single stream would fill a whole batch from
one or two long files and make every gradient a sample of one file.

Resuming needs only each stream's (epoch, cursor, offset) and a row counter:
document order and each document's FIM transform are pure functions of (seed,
stream, epoch, document), so the streams can be rebuilt from any point.

With several processes every rank builds the same global micro batch and keeps
its own slice of rows, so N processes see exactly the data of one.
"""

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch

from codelm.data.fim import fim_transform
from codelm.errors import UserError
from codelm.model.fused_ce import (
    IGNORE,  # target id excluded from the loss (padding of the final evaluation row)
)
from codelm.tokenizer import Tokenizer


@dataclass
class Batch:
    inputs: torch.Tensor  # (B, T) int64
    targets: torch.Tensor  # (B, T) int64, IGNORE where padded
    doc_ids: torch.Tensor  # (B, T) int64, document number within the row

    def to(self, device) -> "Batch":
        return Batch(*(t.to(device, non_blocking=True) for t in (self.inputs, self.targets, self.doc_ids)))


@dataclass
class StreamState:
    epoch: int = 0
    cursor: int = 0  # position in this epoch's document order
    offset: int = 0  # tokens of that document already consumed


class PackedLoader:
    """Infinite (training) or single-pass (evaluation) source of packed rows.

    docs: a sequence of token arrays (TokenShards, or a list).
    streams: independent streams rows are drawn from round-robin (default: one per row of a global micro
        batch; the trainer passes one per row of an optimizer step). Capped at the number of documents.
    tokenizer and fim_rate > 0 enable the FIM transform.
    passes=1 (single stream only) makes a finite loader whose last row is padded with IGNORE targets.
    """

    def __init__(
        self,
        docs: Sequence,
        seq_len: int,
        batch_rows: int,
        eot_id: int,
        seed: int = 0,
        shuffle: bool = True,
        tokenizer: Tokenizer | None = None,
        fim_rate: float = 0.0,
        fim_spm_rate: float = 0.5,
        passes: int | None = None,
        rank: int = 0,
        world: int = 1,
        streams: int | None = None,
    ):
        if len(docs) == 0:
            raise ValueError("no documents to load")
        if fim_rate > 0 and tokenizer is None:
            raise ValueError("the FIM transform needs the tokenizer")
        n_streams = min(streams or batch_rows * world, len(docs))
        if passes is not None and n_streams != 1:
            raise ValueError("a finite loader (passes) reads one stream")
        self.docs, self.seq_len, self.batch_rows, self.eot_id = docs, seq_len, batch_rows, eot_id
        self.seed, self.shuffle, self.tok = seed, shuffle, tokenizer
        self.fim_rate, self.fim_spm_rate, self.passes = fim_rate, fim_spm_rate, passes
        self.rank, self.world = rank, world
        self.n_streams = n_streams
        self.streams = [StreamState() for _ in range(n_streams)]
        self.rows_read = 0
        self._orders: dict[int, tuple[int, np.ndarray]] = {}
        self._cached: dict[int, tuple[tuple, np.ndarray]] = {}

    def state_dict(self) -> dict:
        return {"rows_read": self.rows_read, "streams": [asdict(s) for s in self.streams]}

    def load_state_dict(self, d: dict):
        if len(d["streams"]) != self.n_streams:
            raise UserError(f"cannot resume: the checkpoint drew each optimizer step from {len(d['streams'])} row "
                            f"streams, this run from {self.n_streams}; resume with the same train.micro_batch, "
                            f"train.batch_tokens and number of processes")
        self.rows_read = d["rows_read"]
        self.streams = [StreamState(**s) for s in d["streams"]]

    def _order(self, stream: int, epoch: int) -> np.ndarray:
        """Document indices of a stream in an epoch: its share of the corpus, shuffled per epoch."""
        cached = self._orders.get(stream)
        if cached is None or cached[0] != epoch:
            own = np.arange(stream, len(self.docs), self.n_streams)
            if self.shuffle:
                own = np.random.default_rng([self.seed, stream, epoch]).permutation(own)
            self._orders[stream] = cached = (epoch, own)
        return cached[1]

    def _document(self, stream: int, epoch: int, cursor: int) -> np.ndarray:
        """Stream tokens of a document: <|endoftext|> then its text, FIM-transformed with probability fim_rate."""
        key = (epoch, cursor)
        cached = self._cached.get(stream)
        if cached is None or cached[0] != key:
            idx = int(self._order(stream, epoch)[cursor])
            ids = self.docs[idx]
            if self.fim_rate > 0:
                rng = np.random.default_rng([self.seed, stream, epoch, idx])
                if rng.random() < self.fim_rate:
                    ids = fim_transform(ids, self.tok, rng, self.fim_spm_rate)
            cached = (key, np.concatenate([[self.eot_id], np.asarray(ids, dtype=np.int64)]))
            self._cached[stream] = cached
        return cached[1]

    def _exhausted(self, state: StreamState) -> bool:
        return self.passes is not None and state.epoch >= self.passes

    def _read(self, stream: int, state: StreamState, n: int) -> tuple[np.ndarray, StreamState]:
        """Up to n tokens of a stream from a position, and the position after them."""
        parts, have = [], 0
        state = StreamState(**asdict(state))
        n_own = len(range(stream, len(self.docs), self.n_streams))  # this stream's share of the documents
        while have < n and not self._exhausted(state):
            doc = self._document(stream, state.epoch, state.cursor)
            part = doc[state.offset : state.offset + n - have]
            parts.append(part)
            have += len(part)
            state.offset += len(part)
            if state.offset >= len(doc):
                state.cursor, state.offset = state.cursor + 1, 0
                if state.cursor >= n_own:
                    state.epoch, state.cursor = state.epoch + 1, 0
        return (np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)), state

    def _row(self) -> np.ndarray | None:
        """T+1 tokens of the next stream in turn (padded with IGNORE where a finite stream ends)."""
        stream = self.rows_read % self.n_streams
        head, after = self._read(stream, self.streams[stream], self.seq_len)
        last, _ = self._read(stream, after, 1)
        row = np.concatenate([head, last])
        if len(row) <= 1:  # nothing left to predict
            return None
        self.streams[stream] = after
        self.rows_read += 1
        if len(row) < self.seq_len + 1:
            row = np.concatenate([row, np.full(self.seq_len + 1 - len(row), IGNORE, dtype=np.int64)])
        return row

    def next_batch(self) -> Batch | None:
        """This rank's rows of the next global micro batch; None when a finite loader is done."""
        rows = []
        for _ in range(self.batch_rows * self.world):
            row = self._row()
            if row is None:
                break
            rows.append(row)
        rows = rows[self.rank * self.batch_rows : (self.rank + 1) * self.batch_rows]
        if not rows:
            return None
        data = torch.from_numpy(np.stack(rows))
        inputs, targets = data[:, :-1].clone(), data[:, 1:].clone()
        inputs[inputs == IGNORE] = self.eot_id  # padding positions: any valid id, never a target
        doc_ids = torch.cumsum(inputs == self.eot_id, dim=1)
        return Batch(inputs, targets, doc_ids)

    def __iter__(self):
        while (batch := self.next_batch()) is not None:
            yield batch
