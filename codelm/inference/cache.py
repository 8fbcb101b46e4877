"""A preallocated key/value cache for a batch of sequences of different lengths.

Per layer, keys and values are (batch, kv_heads, max_len, head_dim): sized by
GQA's kv heads, not the query heads. Prompts of different lengths are left-padded
to one length, so every row writes its next token at the same slot; `valid`
(batch, max_len) marks which slots hold real tokens and the attention mask hides
the rest. Rows can be copied (n samples after one prefill), reordered (beam
search) and the whole cache truncated (speculative decoding rolls back rejected
draft tokens).

`SlotView` is the same cache seen by one decode step with every shape fixed, so
that torch.compile captures the step once (and CUDA graphs can replay it).
"""

import torch
import torch.nn.functional as F

from codelm.config import ModelConfig
from codelm.errors import UserError


class DenseAttention:
    """For caches whose `update` returns every key and value a query may see as dense tensors: attention is
    then one SDPA, the mask hiding what a query must not see (SDPA broadcasts GQA's kv heads)."""

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None
               ) -> torch.Tensor:
        k, v = self.update(layer, k, v)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=k.shape[1] != q.shape[1])


class KVCache(DenseAttention):
    """max_len slots per row. Slots are not positions: with left padding a batch may need more slots
    than the model's context while every row's positions stay inside it (the engine checks those)."""

    def __init__(self, cfg: ModelConfig, batch: int, max_len: int, dtype=torch.float32, device="cpu"):
        shape = (batch, cfg.n_kv_heads, max_len, cfg.head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(cfg.n_layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(cfg.n_layers)]
        self.valid = torch.zeros(batch, max_len, dtype=torch.bool, device=device)
        self.length = 0  # slots in use, the same for every row

    @property
    def batch(self) -> int:
        return self.valid.shape[0]

    @property
    def max_len(self) -> int:
        return self.valid.shape[1]

    def append_mask(self, valid: torch.Tensor) -> torch.Tensor:
        """Record which of the T new slots are real; the boolean (B, 1, T, length + T) attention mask.

        A query sees the valid keys up to itself. It always sees itself, so a padding
        query has one key and never a softmax over nothing (its output is unused)."""
        T = valid.shape[1]
        start, end = self.length, self.length + T
        if end > self.max_len:
            raise UserError(f"the cache holds {self.max_len} tokens; {end} were asked for")
        self.valid[:, start:end] = valid
        slots = torch.arange(end, device=valid.device)
        query_slots = slots[start:, None]
        causal = slots[None, :] <= query_slots
        visible = (self.valid[:, None, :end] & causal) | (slots[None, :] == query_slots)
        return visible[:, None]

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write the new keys/values (B, H_kv, T, D) at the current slots; all keys/values so far."""
        end = self.length + k.shape[2]
        self.k[layer][:, :, self.length:end] = k
        self.v[layer][:, :, self.length:end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]

    def reserve(self, slots: int):
        """Room for `slots` more slots past the ones in use, growing the buffers if needed (left-padded chunks of
        forced tokens, and rows that went back, use slots faster than the rows' tokens); by a quarter at least,
        so that a cache that keeps needing one more slot is not copied every step."""
        extra = self.length + slots - self.max_len
        if extra > 0:
            extra = max(extra, self.max_len // 4)
            self.k = [F.pad(k, (0, 0, 0, extra)) for k in self.k]
            self.v = [F.pad(v, (0, 0, 0, extra)) for v in self.v]
            self.valid = F.pad(self.valid, (0, extra))

    def advance(self, T: int):
        """The T slots written by the step that just ran are now in use (Transformer.decode_step calls this)."""
        self.length += T

    def truncate(self, length: int):
        """Forget every slot from `length` on."""
        self.valid[:, length:] = False
        self.length = length

    def select(self, rows: torch.Tensor):
        """Keep, copy or reorder rows: row i becomes old row rows[i] (the batch size may change)."""
        self.k = [k.index_select(0, rows) for k in self.k]
        self.v = [v.index_select(0, rows) for v in self.v]
        self.valid = self.valid.index_select(0, rows)


class SlotView(DenseAttention):
    """One new token per row written at `slot` (a 1-element tensor) of KVCache buffers; attends to all slots.

    KVCache slices its buffers to the slots in use, so their shapes change every
    step; here the step's inputs keep their shapes and the slot is data, so a
    compiled step runs unchanged for the whole generation. Slots that are not
    valid or not yet written are masked: the result equals KVCache's up to
    summation order."""

    def __init__(self, k: list[torch.Tensor], v: list[torch.Tensor], valid: torch.Tensor, slot: torch.Tensor):
        self.k, self.v, self.valid, self.slot = k, v, valid, slot

    def append_mask(self, valid: torch.Tensor) -> torch.Tensor:
        self.valid[:, self.slot] = valid
        slots = torch.arange(self.valid.shape[1], device=valid.device)
        return (self.valid & (slots <= self.slot))[:, None, None, :]

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.k[layer][:, :, self.slot] = k
        self.v[layer][:, :, self.slot] = v
        return self.k[layer], self.v[layer]

    def advance(self, T: int):
        """Nothing: the view lives for one step, and Engine.step advances the KVCache under it after the
        compiled call (a Python int changed inside the compiled step would recompile it every step)."""
