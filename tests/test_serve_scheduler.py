"""The continuous-batching scheduler and its block cache, driven step by step without HTTP: every request's tokens
equal the engine's offline generation (fp64) whatever else is in flight, late requests start at once, prefix
caching changes nothing but the work done, and the block pool shares, keeps and evicts blocks as it should."""

import pytest
import torch
from serve_live import break_prompt
from test_inference import random_model

from codelm.chat import encode_chat
from codelm.config import ModelConfig, SamplingParams
from codelm.inference.engine import Engine
from codelm.serve.blocks import BatchView, BlockPool, chain_key
from codelm.serve.metrics import Metrics
from codelm.serve.scheduler import Request, Scheduler

CONTEXT = 256


@pytest.fixture(scope="module")
def engine(code_tok):
    return Engine(random_model(code_tok.vocab_size, seed=1, context=CONTEXT).double(), code_tok)


def scheduler(engine, prefix_caching=True, block_size=8, step_tokens=24, max_seqs=8, blocks=256) -> Scheduler:
    pool = BlockPool(engine.model.config, blocks, block_size, engine.dtype, prefix_caching=prefix_caching)
    return Scheduler(engine, pool, Metrics(), max_seqs=max_seqs, step_tokens=step_tokens)


class Collected:
    """A request's events, as the server would receive them, with the step each arrived at."""

    def __init__(self, sched: Scheduler, prompt: list[int], params: SamplingParams, n: int = 1):
        self.sched, self.events = sched, []
        self.request = Request(prompt, params, params.max_new_tokens, self.events.append, n=n, logprobs=0)
        sched.submit(self.request)

    def tokens(self, sample: int = 0) -> list[int]:
        return [e.token.token for e in self.events if e.sample == sample and e.token]

    def done(self) -> bool:
        return sum(e.finish_reason is not None for e in self.events) == self.request.n


def run(sched: Scheduler, until=None):
    while sched.running or sched.waiting:
        sched.step()
        if until is not None and until():
            return


def offline(engine: Engine, prompt: list[int], params: SamplingParams) -> list[list[int]]:
    return [c.token_ids for c in engine.generate([prompt], params)[0]]


def test_every_request_equals_offline_generation_whatever_is_in_flight(engine, monkeypatch):
    steps = []  # each forward's new-token counts per sequence
    view_init = BatchView.__init__
    monkeypatch.setattr(BatchView, "__init__", lambda self, pool, tables, starts, counts: (
        steps.append(counts), view_init(self, pool, tables, starts, counts))[1])
    tok = engine.tok
    prompts = [engine.encode(text) for text in
               ["import os", "def parse(line):\n    return line.split(',')\n\n\nclass Reader:\n    def __init__(self, "
                "path):\n        self.path = path\n        self.lines = []\n", "x = 1", "for i in range(10):\n   "]]
    greedy = SamplingParams(max_new_tokens=20, stop=["\n\n\n"])
    sampled = SamplingParams(strategy="sample", max_new_tokens=15, top_p=0.9, top_k=40, seed=3, n=2)
    sched = scheduler(engine)  # 24 tokens a step: the long prompt's prefill takes several chunked steps
    first = [Collected(sched, prompts[0], greedy), Collected(sched, prompts[1], greedy),
             Collected(sched, prompts[2], sampled, n=2)]
    for _ in range(4):
        sched.step()
    late = [Collected(sched, prompts[3], greedy), Collected(sched, tok.encode("y = ["), greedy)]  # mid-batch
    run(sched)
    for c in [*first, *late]:
        expected = offline(engine, c.request.prompt, c.request.params)
        assert [c.tokens(j) for j in range(c.request.n)] == expected
    assert sched.metrics.batch_sizes.count > 0 and max(sched.metrics.batch_sizes.counts[2:]) > 0  # batches of 3+
    assert any(1 in counts and max(counts) > 1 for counts in steps)  # decode rows and a prefill chunk, one forward
    assert len(steps) == sched.metrics.steps  # one forward a step
    assert sched.pool.available() == sched.pool.num_blocks  # every block back once all have finished


def test_a_request_admitted_mid_batch_starts_before_the_batch_ends(engine):
    sched = scheduler(engine)
    long = Collected(sched, engine.encode("while True:"), SamplingParams(max_new_tokens=60))
    for _ in range(5):
        sched.step()
    short = Collected(sched, engine.encode("import re"), SamplingParams(max_new_tokens=3))
    run(sched, until=short.done)
    assert short.done() and not long.done()
    assert len(long.tokens()) < 15  # the short request took a few steps beside it, not a wait for its end
    run(sched)
    assert long.tokens() == offline(engine, long.request.prompt, long.request.params)[0]


def test_prefix_cache_hits_a_shared_system_prompt_with_the_cold_cache_output(engine):
    system = {"role": "system", "content": "You are a careful Python programmer. Answer with code only, "
              "in one function, with type hints and a docstring, and no explanation before or after it."}
    chats = [encode_chat(engine.tok, [system, {"role": "user", "content": ask}], None)
             for ask in ("Reverse a string.", "Sum a list of numbers.", "Reverse a string.")]
    params = SamplingParams(max_new_tokens=12)

    def outputs(prefix_caching: bool):
        sched = scheduler(engine, prefix_caching=prefix_caching)
        results = []
        for prompt in chats:  # one after the other: each finds what the earlier ones left in the cache
            c = Collected(sched, prompt, params)
            run(sched)
            results.append(c.tokens())
        return results, sched

    cold, cold_sched = outputs(False)
    warm, warm_sched = outputs(True)
    assert warm == cold
    assert cold_sched.pool.hit_tokens == 0
    shared = next(i for i, (a, b) in enumerate(zip(chats[0], chats[1])) if a != b)
    size = warm_sched.pool.block_size
    # the second chat reuses the system prompt's full blocks; the third repeats the first whole but its last token
    assert warm_sched.metrics.cached_prompt_tokens == shared // size * size + (len(chats[2]) - 1) // size * size
    assert 0 < warm_sched.pool.hit_tokens / warm_sched.pool.queried_tokens < 1


def test_samples_of_one_request_share_their_prompt_blocks(engine):
    sched = scheduler(engine, max_seqs=4)
    prompt = engine.encode("def merge(left, right):\n    result = []\n    while left and right:\n")
    c = Collected(sched, prompt, SamplingParams(strategy="sample", max_new_tokens=5, n=3, seed=1), n=3)
    run(sched)
    full = (len(prompt) - 1) // sched.pool.block_size * sched.pool.block_size
    assert sched.metrics.cached_prompt_tokens == 2 * full  # samples 2 and 3 reuse sample 1's prefill
    assert [c.tokens(j) for j in range(3)] == offline(engine, prompt, c.request.params)


def test_an_error_in_one_sequence_fails_only_that_one(engine, monkeypatch):
    sched = scheduler(engine)
    broken = engine.encode("raise SystemError")
    break_prompt(monkeypatch, broken)
    fine, failing = (Collected(sched, p, SamplingParams(max_new_tokens=6)) for p in (engine.encode("a = 2"), broken))
    run(sched)
    assert [e.finish_reason for e in failing.events] == ["error"] and "injected" in failing.events[0].error
    assert fine.tokens() == offline(engine, fine.request.prompt, fine.request.params)[0]


@pytest.mark.parametrize("share", [True, False], ids=["shared-leading-blocks", "no-common-block"])
def test_packed_step_attends_as_each_sequence_alone(share):
    """Decode rows and prefill chunks packed in one row, leading blocks common to a group scored once (cascade)
    or not: each sequence's output equals plain causal attention over its own keys."""
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=16, dim=32, n_layers=1, n_heads=4, n_kv_heads=2, max_seq_len=64)
    pool = BlockPool(cfg, num_blocks=16, block_size=4, dtype=torch.float64)
    pool.k[0].normal_(), pool.v[0].normal_()
    for copy, block in ((12, 0), (13, 1)):  # blocks 12, 13 hold what 0, 1 hold
        pool.k[0][copy * 4:copy * 4 + 4] = pool.k[0][block * 4:block * 4 + 4]
        pool.v[0][copy * 4:copy * 4 + 4] = pool.v[0][block * 4:block * 4 + 4]
    other = [0, 1] if share else [12, 13]
    tables = [[0, 1, 2, 3], other + [4, 5], [0, 1, 6, 7], other + [8, 9]]
    starts, counts = [9, 10, 8, 8], [1, 1, 3, 4]  # two decoding, two prefill chunks of different lengths
    view = BatchView(pool, tables, starts, counts)
    assert [g.shared_slots.numel() for g in view.groups] == ([8, 8] if share else [0, 0])
    N = sum(counts)
    q, k, v = torch.randn(1, 4, N, 8, dtype=torch.float64), *torch.randn(2, 1, 2, N, 8, dtype=torch.float64)
    y = view.attend(0, q, k, v, None)
    offset = 0
    for table, start, count in zip(tables, starts, counts):
        slots = torch.tensor([table[p // 4] * 4 + p % 4 for p in range(start + count)])
        keys, values = pool.k[0][slots].transpose(0, 1)[None], pool.v[0][slots].transpose(0, 1)[None]
        visible = torch.arange(start + count)[None, :] <= torch.arange(start, start + count)[:, None]
        expected = torch.nn.functional.scaled_dot_product_attention(
            q[:, :, offset:offset + count], keys, values, attn_mask=visible, enable_gqa=True)
        torch.testing.assert_close(y[:, :, offset:offset + count], expected, rtol=0, atol=1e-12)
        offset += count


def test_block_pool_shares_by_reference_and_evicts_least_recently_used():
    cfg = ModelConfig(vocab_size=16, dim=8, n_layers=1, n_heads=1, n_kv_heads=1, max_seq_len=32)
    pool = BlockPool(cfg, num_blocks=3, block_size=2, dtype=torch.float32)
    keys = [chain_key(b"", [1, 2])]
    keys.append(chain_key(keys[0], [3, 4]))
    assert chain_key(b"", [3, 4]) != keys[1]  # a block's key depends on everything before it
    a, b = pool.allocate(), pool.allocate()
    pool.index(a, keys[0])
    pool.index(b, keys[1])
    assert pool.match(keys) == [a, b] and pool.refs[a] == 2  # shared while its first owner still holds it
    pool.release([a, b])
    pool.release([a, b])  # both owners done: the blocks stay cached, idle
    assert pool.available() == 3 and pool.match(keys[:1]) == [a]
    pool.release([a])  # a was used after b: b is now the least recently used
    c, d = pool.allocate(), pool.allocate()  # the free block first, then the LRU idle one, its key forgotten
    assert d == b and c not in (a, b)
    assert pool.match(keys) == [a] and pool.refs[a] == 1  # the chain now ends where b's contents were lost
    assert pool.available() == 0
