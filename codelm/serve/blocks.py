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

    def gather(self, layer: int, slots: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values (B, kv_heads, length, head_dim) at token slots (B, length): one copy each."""
        return self.k[layer][slots].transpose(1, 2), self.v[layer][slots].transpose(1, 2)


class BatchView:
    """The cache as Transformer.decode_step sees it for one forward of T new tokens per row.

    Row b holds `starts[b]` tokens already; its new tokens go at positions starts[b]..starts[b]+T-1 of its
    block table (the blocks must exist). Each query sees its own row's positions up to itself."""

    def __init__(self, pool: BlockPool, tables: list[list[int]], starts: list[int], T: int):
        self.pool, self.T = pool, T
        device = pool.k[0].device
        self.length = max(starts) + T  # keys gathered per row, padding masked
        size = pool.block_size
        width = -(-self.length // size)
        tables = torch.tensor([(t + [0] * width)[:width] for t in tables], device=device)
        keys = torch.arange(self.length, device=device)
        self.slots = tables[:, keys // size] * size + keys % size  # (B, length); padding reads block 0, masked
        positions = torch.tensor(starts, device=device)[:, None] + torch.arange(T, device=device)  # (B, T)
        self.positions = positions
        self.write_slots = self.slots.gather(1, positions).flatten()

    def append_mask(self, valid: torch.Tensor) -> torch.Tensor:
        """Boolean (B, 1, T, length): key position j is visible to the query at position p when j <= p."""
        keys = torch.arange(self.length, device=valid.device)
        return (keys[None, None, :] <= self.positions[:, :, None])[:, None]

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        B, H, T, D = k.shape
        self.pool.write(layer, self.write_slots, k.transpose(1, 2).reshape(B * T, H, D),
                        v.transpose(1, 2).reshape(B * T, H, D))
        return self.pool.gather(layer, self.slots)

    def advance(self, T: int):
        """Nothing: the scheduler counts each sequence's cached tokens itself."""
