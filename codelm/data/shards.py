"""Token shards: flat token files plus a document index, memory-mapped for reading.

A shard directory holds `shard_00000.bin` (token ids, uint16 when the vocab
fits, else uint32), `shard_00000.idx` (int64 document start offsets, one more
than the number of documents) and `meta.json`, written last. Documents are
appended one at a time, so the corpus never has to fit in memory. Every file is
written under a temporary name and renamed, and a directory without meta.json
is incomplete and refused.
"""

import json
import os
from bisect import bisect_right
from pathlib import Path

import numpy as np

from codelm.errors import UserError
from codelm.io import atomic_write_bytes


def token_dtype(vocab_size: int):
    return np.uint16 if vocab_size <= 2**16 else np.uint32


class ShardWriter:
    """Append documents (lists of token ids); `close()` finishes the last shard and writes meta.json."""

    def __init__(self, out_dir: str | Path, vocab_size: int, shard_tokens: int = 1 << 28):
        self.dir = Path(out_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.vocab_size = vocab_size
        self.dtype = token_dtype(vocab_size)
        self.shard_tokens = shard_tokens
        self.shards: list[dict] = []
        self._open_shard()

    def _open_shard(self):
        self.name = f"shard_{len(self.shards):05d}"
        self.tmp_path = self.dir / f"{self.name}.bin.tmp"
        self.file = open(self.tmp_path, "wb")
        self.offsets = [0]

    def _close_shard(self):
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        self.tmp_path.replace(self.dir / f"{self.name}.bin")
        atomic_write_bytes(self.dir / f"{self.name}.idx", [np.asarray(self.offsets, dtype=np.int64).tobytes()])
        self.shards.append({"name": self.name, "n_docs": len(self.offsets) - 1, "n_tokens": self.offsets[-1]})

    def add(self, ids):
        arr = np.asarray(ids, dtype=self.dtype)
        if self.offsets[-1] and self.offsets[-1] + len(arr) > self.shard_tokens:
            self._close_shard()
            self._open_shard()
        self.file.write(arr.tobytes())
        self.offsets.append(self.offsets[-1] + len(arr))

    def close(self, extra_meta: dict | None = None) -> dict:
        self._close_shard()
        meta = {
            "dtype": np.dtype(self.dtype).name,
            "vocab_size": self.vocab_size,
            "n_docs": sum(s["n_docs"] for s in self.shards),
            "n_tokens": sum(s["n_tokens"] for s in self.shards),
            "shards": self.shards,
            **(extra_meta or {}),
        }
        atomic_write_bytes(self.dir / "meta.json", [json.dumps(meta, indent=2).encode()])
        return meta


class TokenShards:
    """Read-only, memory-mapped view of a shard directory: `len(shards)` documents, `shards[i]` their tokens."""

    def __init__(self, path: str | Path):
        self.dir = Path(path)
        meta_path = self.dir / "meta.json"
        if not meta_path.is_file():
            raise UserError(f"no token shards at {self.dir} (meta.json missing; run `codelm tokenize`)")
        self.meta = json.loads(meta_path.read_text())
        dtype = np.dtype(self.meta["dtype"])
        self.tokens, self.offsets, starts = [], [], [0]
        for shard in self.meta["shards"]:
            bin_path = self.dir / f"{shard['name']}.bin"
            if not bin_path.is_file() or bin_path.stat().st_size != shard["n_tokens"] * dtype.itemsize:
                raise UserError(f"token shard {bin_path} is missing or truncated")
            self.tokens.append(np.memmap(bin_path, dtype=dtype, mode="r", shape=(shard["n_tokens"],)))
            self.offsets.append(np.fromfile(self.dir / f"{shard['name']}.idx", dtype=np.int64))
            starts.append(starts[-1] + shard["n_docs"])
        self.doc_starts = starts  # global index of each shard's first document

    @property
    def vocab_size(self) -> int:
        return self.meta["vocab_size"]

    @property
    def n_tokens(self) -> int:
        return self.meta["n_tokens"]

    def __len__(self) -> int:
        return self.meta["n_docs"]

    def __getitem__(self, i: int) -> np.ndarray:
        s = bisect_right(self.doc_starts, i) - 1
        j = i - self.doc_starts[s]
        return self.tokens[s][self.offsets[s][j] : self.offsets[s][j + 1]]
