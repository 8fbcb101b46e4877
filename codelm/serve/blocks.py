"""A block-structured KV cache shared by every running sequence, with automatic prefix caching.

Why blocks: sequences of a continuous batch start and end at different times and
grow by different amounts, so one (batch, max_len) tensor would have to be
re-packed at every arrival. Instead keys and values live in a pool of fixed-size
blocks and each sequence keeps a block table: position p is slot p % block_size
of block table[p // block_size]. Per layer the pool is one (blocks * block_size,
kv_heads, head_dim) tensor, token-major, so reading a batch's keys is a single
indexed copy into the (B, length, kv_heads, head_dim) that attention takes as
a transposed view.

Why hash chains: a full block's contents depend on every token before it, so it
is keyed by hash(key of the block before, its own tokens) (vLLM's automatic
prefix caching). A new prompt walks its full blocks' keys and reuses every block
already computed for the same prefix (a shared system prompt, a file being
edited), skipping that part of the prefill. Blocks are shared by reference
count; a block no sequence uses keeps its contents and key while it waits, least
recently used first, to be taken for new contents when the free list is empty.
"""

import hashlib
from array import array
from collections import OrderedDict

import torch
import torch.nn.functional as F

from codelm.config import ModelConfig


def chain_key(parent: bytes, tokens: list[int]) -> bytes:
    """The key of a full block: its tokens and, through the parent's key, every token before them."""
    return hashlib.blake2b(parent + array("q", tokens).tobytes(), digest_size=16).digest()


class BlockPool:
    """Keys/values of `num_blocks` blocks of `block_size` tokens, their reference counts and the prefix index."""

    def __init__(self, cfg: ModelConfig, num_blocks: int, block_size: int, dtype=torch.float32, device="cpu",
                 prefix_caching: bool = True):
        shape = (num_blocks * block_size, cfg.n_kv_heads, cfg.head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(cfg.n_layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(cfg.n_layers)]
        self.block_size, self.num_blocks, self.prefix_caching = block_size, num_blocks, prefix_caching
        self.refs = [0] * num_blocks
        self.key_of: dict[int, bytes] = {}  # block -> its chain key, for full blocks that are indexed
        self.block_of: dict[bytes, int] = {}  # chain key -> block
        self.free = list(range(num_blocks - 1, -1, -1))  # never-used or unindexed blocks (pop from the end)
        self.idle: OrderedDict[int, None] = OrderedDict()  # indexed blocks nobody uses, least recently used first
        self.queried_tokens = 0  # prompt tokens looked up in the index, and how many were found
        self.hit_tokens = 0

    def available(self) -> int:
        """Blocks that can be given out now (free, or idle and evictable)."""
        return len(self.free) + len(self.idle)

    def allocate(self) -> int:
        """A block for new contents: a free one, else the least recently used idle one (its key forgotten)."""
        if self.free:
            block = self.free.pop()
        else:
            block, _ = self.idle.popitem(last=False)
            del self.block_of[self.key_of.pop(block)]
        self.refs[block] = 1
        return block

    def release(self, blocks: list[int]):
        """A sequence is done with these blocks: unused indexed ones wait in LRU order, others are free."""
        for block in reversed(blocks):  # a prefix's later blocks are evicted before its first ones
            self.refs[block] -= 1
            if self.refs[block] == 0:
                if block in self.key_of:
                    self.idle[block] = None
                else:
                    self.free.append(block)

    def match(self, keys: list[bytes]) -> list[int]:
        """The cached blocks of the longest prefix of `keys`, now referenced by the caller."""
        found = []
        for key in keys if self.prefix_caching else []:
            block = self.block_of.get(key)
            if block is None:
                break
            if self.refs[block] == 0:
                del self.idle[block]
            self.refs[block] += 1
            found.append(block)
        self.queried_tokens += len(keys) * self.block_size
        self.hit_tokens += len(found) * self.block_size
        return found

    def index(self, block: int, key: bytes):
        """A block just became full: later prompts with the same prefix may reuse it (first writer wins)."""
        if self.prefix_caching and key not in self.block_of:
            self.block_of[key] = block
            self.key_of[block] = key

    def write(self, layer: int, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
        """Store keys/values (N, kv_heads, head_dim) at token slots (N,) (block * block_size + offset)."""
        self.k[layer][slots] = k
        self.v[layer][slots] = v

    def gather(self, layer: int, slots: torch.Tensor, out: tuple[torch.Tensor, torch.Tensor]
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values (B, kv_heads, length, head_dim) at token slots (B, length), copied into `out`
        ((B * length, kv_heads, head_dim) each).

        index_select into a buffer the caller reuses for every layer: on CPU it copies whole rows, where
        advanced indexing (pool[slots]) allocates and copies per element."""
        B, length = slots.shape
        gathered = []
        for pool, buffer in zip((self.k[layer], self.v[layer]), out):
            torch.index_select(pool, 0, slots.flatten(), out=buffer)
            gathered.append(buffer.view(B, length, *pool.shape[1:]).transpose(1, 2))
        return gathered[0], gathered[1]


class AttentionGroup:
    """Rows of one attention call: every row's queries (padded to the longest) and the keys its sequence holds.

    Row r is a sequence holding starts[r] tokens whose counts[r] new tokens sit at packed[r]... of the step's
    packed row. Short rows repeat their last query (its output is dropped); keys past a query's position,
    and padding (which reads block 0), are masked.

    Leading blocks that every row's table shares (a common system prompt or file, n samples of one prompt)
    are gathered once and scored for all rows in one matmul (cascade attention, as in FlashInfer and vLLM):
    with 16 sequences on a 500-token prefix, the step reads 1/16 of the prefix's keys and values."""

    def __init__(self, pool: BlockPool, tables: list[list[int]], starts: list[int], counts: list[int],
                 packed: list[int]):
        device, size = pool.k[0].device, pool.block_size
        T, length = max(counts), max(s + c for s, c in zip(starts, counts))
        shared = 0  # leading blocks common to every row, all before its first query
        while len(tables) > 1 and shared < min(starts) // size and all(t[shared] == tables[0][shared] for t in tables):
            shared += 1
        width = -(-length // size)
        table = torch.tensor([(t + [0] * width)[:width] for t in tables], device=device)
        keys = torch.arange(shared * size, length, device=device)
        self.slots = table[:, keys // size] * size + keys % size  # (rows, own keys)
        self.shared_slots = (table[:1, :shared, None] * size + torch.arange(size, device=device)).view(1, -1)
        counts_ = torch.tensor(counts, device=device)[:, None]
        step = torch.minimum(torch.arange(T, device=device), counts_ - 1)  # (rows, T)
        positions = torch.tensor(starts, device=device)[:, None] + step
        self.queries = torch.tensor(packed, device=device)[:, None] + step  # indices into the packed row
        self.real = torch.arange(T, device=device) < counts_
        hidden = keys[None, None, :] > positions[:, :, None]
        self.mask = torch.zeros(hidden.shape, dtype=pool.k[0].dtype, device=device).masked_fill_(
            hidden, float("-inf"))[:, None]  # (rows, 1, T, own keys), additive: built once for every layer
        self.buffers = self._buffers(pool, self.slots.numel())  # each layer's gather, in turn
        self.shared_buffers = self._buffers(pool, self.shared_slots.numel())

    @staticmethod
    def _buffers(pool: BlockPool, tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (tokens, *pool.k[0].shape[1:])
        return pool.k[0].new_empty(shape), pool.v[0].new_empty(shape)

    def attend(self, pool: BlockPool, layer: int, q: torch.Tensor) -> torch.Tensor:
        """Attention output (rows, heads, T, head_dim) of queries (rows, heads, T, head_dim)."""
        keys, values = pool.gather(layer, self.slots, self.buffers)
        if not self.shared_slots.numel():
            return F.scaled_dot_product_attention(q, keys, values, attn_mask=self.mask,
                                                  enable_gqa=keys.shape[1] != q.shape[1])
        shared_keys, shared_values = pool.gather(layer, self.shared_slots, self.shared_buffers)
        return shared_prefix_attention(q, shared_keys[0], shared_values[0], keys, values, self.mask)


def shared_prefix_attention(q: torch.Tensor, shared_k: torch.Tensor, shared_v: torch.Tensor, k: torch.Tensor,
                            v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Softmax attention of every row over [keys all rows share, the row's own keys], exactly as over their
    concatenation; the shared part is one matmul for all rows' queries.

    q (R, H, T, D); shared_k/v (Hkv, S, D), visible to every query; k, v (R, Hkv, L, D) with the additive
    mask (R, 1, T, L). Query head h reads kv head h // (H / Hkv), as SDPA's enable_gqa does."""
    R, H, T, D = q.shape
    kv_heads, S = shared_k.shape[:2]
    queries = q.reshape(R, kv_heads, H // kv_heads * T, D) * D ** -0.5  # (R, Hkv, g*T, D): groups of g heads
    by_head = queries.transpose(0, 1).reshape(kv_heads, -1, D)  # every row's queries per kv head
    shared = (by_head @ shared_k.transpose(1, 2)).view(kv_heads, R, -1, S).transpose(0, 1)
    own = queries @ k.transpose(2, 3) + mask.repeat(1, kv_heads, H // kv_heads, 1)  # row j*T + t: mask[t]
    probs = torch.cat([shared, own], dim=-1).softmax(-1)
    shared_out = probs[..., :S].transpose(0, 1).reshape(kv_heads, -1, S) @ shared_v
    out = shared_out.view(kv_heads, R, -1, D).transpose(0, 1) + probs[..., S:] @ v
    return out.reshape(R, H, T, D)


class BatchView:
    """The cache as Transformer.decode_step sees one scheduler step: every sequence's new tokens in one row.

    Sequence i holds starts[i] tokens; its counts[i] new tokens follow at positions starts[i].. of its block
    table (the blocks must exist). The step's input is the (1, sum(counts)) row of everyone's new tokens, so
    the weights are read once for the decoding sequences and the prefill chunks together. Attention then
    runs in two groups, each over its rows' gathered keys: one-token rows (decoding) together, longer ones
    (prefill chunks) together, so a decode row is never padded to a chunk's length."""

    def __init__(self, pool: BlockPool, tables: list[list[int]], starts: list[int], counts: list[int]):
        self.pool = pool
        device = pool.k[0].device
        packed = [sum(counts[:i]) for i in range(len(counts))]
        self.positions = torch.tensor([[p for s, c in zip(starts, counts) for p in range(s, s + c)]], device=device)
        self.groups = []
        for rows in ([i for i, c in enumerate(counts) if c == 1], [i for i, c in enumerate(counts) if c > 1]):
            if rows:
                self.groups.append(AttentionGroup(pool, [tables[i] for i in rows], [starts[i] for i in rows],
                                                  [counts[i] for i in rows], [packed[i] for i in rows]))
        size = pool.block_size
        self.write_slots = torch.tensor([tables[i][p // size] * size + p % size for i in range(len(counts))
                                         for p in range(starts[i], starts[i] + counts[i])], device=device)

    def append_mask(self, valid: torch.Tensor) -> None:
        """None: each attention group holds its own mask."""

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: None) -> torch.Tensor:
        """Store the row's new keys/values (1, kv_heads, N, head_dim); attention output (1, heads, N, head_dim)."""
        self.pool.write(layer, self.write_slots, k[0].transpose(0, 1), v[0].transpose(0, 1))
        q, y = q[0], torch.empty_like(q[0])  # (heads, N, head_dim)
        for group in self.groups:
            out = group.attend(self.pool, layer, q[:, group.queries].transpose(0, 1))
            y[:, group.queries[group.real]] = out.transpose(0, 1)[:, group.real]
        return y[None]

    def advance(self, T: int):
        """Nothing: the scheduler counts each sequence's cached tokens itself."""
