"""Continuous batching: one thread owns the model and advances every running sequence one step at a time.

Why: with static batches a request that arrives during a batch waits for all of
it, and a short reply waits for the longest one. Here each step (1) drops
cancelled sequences, (2) admits waiting ones while there is a free slot and the
block pool can hold their prompt and max_tokens, (3) takes one token of every
sequence past its prefill and spends the rest of the step's token budget on
prefill chunks, so a long prompt never stalls the sequences that are decoding,
and (4) runs all of them in one forward, so the weights are read once a step
(BatchView packs them into one row). A sequence that finishes leaves at once and its
blocks go back to the pool.

A request may carry a grammar (structured output); each of its samples then has its own matcher, which
masks that sequence's logits before sampling and ends it when the grammar is complete. Tokens the grammar
forces are appended without sampling and fed with the sampled one as one chunk of the next step
(fast-forward), as a prefill chunk is. Matchers belong to
sequences, never to cached blocks, so prefix caching shares keys and values but no constraint state.
Under the Python-syntax constraint a sequence may go back to an earlier token (codelm.inference.syntax):
it then forgets its tokens past that point and feeds the last kept one again, so the blocks past the prompt
are rewritten, which is why they are not indexed for prefix caching; its text is sent when it ends.

Each sample of a request is its own sequence with its own generator, seeded as
Engine.generate seeds it (sample_seed), and its own sampling settings, so its
tokens do not depend on what else is in flight: greedy output equals the
engine's offline output (exactly in fp64; in fp32 up to summation order).

A sequence reserves at admission the blocks it may need to its end, so a
running sequence never waits for a block and nothing is preempted.
"""

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from codelm.config import SamplingParams
from codelm.errors import UserError
from codelm.inference.constraints import Grammar, mask_logits
from codelm.inference.engine import Engine, sample_seed
from codelm.inference.sampling import apply_processors, processors, sample_rows
from codelm.inference.stops import StopTracker
from codelm.inference.syntax import PythonSyntax, without
from codelm.serve.blocks import BatchView, BlockPool, chain_key
from codelm.serve.metrics import Metrics


class QueueFull(Exception):
    """The waiting queue is full: the client should retry later (HTTP 429)."""


@dataclass
class TokenLogprob:
    token: int
    logprob: float | None  # None for a prompt's first token, which nothing predicts
    top: list[tuple[int, float]] = field(default_factory=list)  # the most likely tokens at that position


@dataclass
class Event:
    """What one sample of a request produced in one step."""

    sample: int
    text: str = ""  # new text that is safe to show (stop strings and partial characters held back)
    token: TokenLogprob | None = None
    finish_reason: str | None = None  # "stop", "length", or "error" (then `error` says why)
    error: str | None = None
    prompt_logprobs: list[TokenLogprob] | None = None  # with the first token, when the request asked
    generated: int = 0  # the sample's tokens so far (forced ones included, taken-back ones not)


@dataclass
class Request:
    """One prompt, `n` samples; `emit` is called from the scheduler thread with each Event."""

    prompt: list[int]
    params: SamplingParams  # n is taken from `n` below, so greedy requests may ask for several samples
    max_new_tokens: int  # already fitted to the context (Engine.budget)
    emit: Callable[[Event], None]
    n: int = 1
    logprobs: int | None = None  # how many top alternatives per token (0: only the chosen token's)
    prompt_logprobs: bool = False  # logprobs of the prompt's tokens too (OpenAI's echo with logprobs)
    extra_stops: list[str] = field(default_factory=list)  # e.g. the chat template's end of turn
    grammar: Grammar | PythonSyntax | None = None  # each sample gets its own matcher or checker (never shared)
    arrival: float = field(default_factory=time.perf_counter)
    cancelled: bool = False  # set by the server when the client goes away


class Sequence:
    """One sample of a request: its tokens, its blocks and how many of its tokens the cache holds."""

    def __init__(self, request: Request, sample: int, tokenizer, block_size: int):
        self.request, self.sample = request, sample
        self.tokens = list(request.prompt)
        self.prompt_len = len(request.prompt)
        self.cached = 0  # tokens whose keys/values are in blocks
        self.blocks: list[int] = []
        self.keys: list[bytes] = []  # chain keys of the full blocks so far
        self.matched = False  # prefix cache looked up
        self.generated = 0
        self.first_token_at: float | None = None
        self.generator = torch.Generator().manual_seed(sample_seed(request.params.seed, request.prompt, sample))
        self.tracker = StopTracker(tokenizer, [*request.params.stop, *request.extra_stops])
        self.prompt_logprobs: list[TokenLogprob] = [TokenLogprob(request.prompt[0], None)]
        grammar = request.grammar
        self.matcher = grammar.matcher() if isinstance(grammar, Grammar) else None
        self.checker = None
        if isinstance(grammar, PythonSyntax):
            prefix = tokenizer.hf.decode(request.prompt, skip_special_tokens=True) if grammar.continues_prompt else ""
            self.checker = grammar.checker(prefix)
        # keys/values are written for every token but the last generated one
        self.blocks_needed = -(-(self.prompt_len + request.max_new_tokens - 1) // block_size)

    @property
    def prefilled(self) -> bool:
        return self.cached >= self.prompt_len

    def outstanding(self) -> int:
        return self.blocks_needed - len(self.blocks)


class Scheduler:
    """The loop that owns the engine's model. submit() from any thread; start() runs the loop in a thread."""

    def __init__(self, engine: Engine, pool: BlockPool, metrics: Metrics, max_seqs: int = 16,
                 max_queue: int = 64, step_tokens: int = 256):
        self.engine, self.pool, self.metrics = engine, pool, metrics
        self.max_seqs, self.max_queue, self.step_tokens = max_seqs, max_queue, step_tokens
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.wake = threading.Condition()
        self.stopped = False
        self.thread: threading.Thread | None = None

    def submit(self, request: Request):
        """Queue a request's samples; QueueFull when the queue cannot take them, UserError when the cache never
        could."""
        seqs = [Sequence(request, j, self.engine.tok, self.pool.block_size) for j in range(request.n)]  # UserError
        if seqs[0].blocks_needed > self.pool.num_blocks:
            raise UserError(f"the prompt and max_tokens need {seqs[0].blocks_needed * self.pool.block_size} cache "
                            f"tokens; this server holds {self.pool.num_blocks * self.pool.block_size}")
        with self.wake:
            if len(self.waiting) + len(seqs) > self.max_queue:
                raise QueueFull(f"{len(self.waiting)} sequences are waiting (the queue holds {self.max_queue})")
            self.waiting.extend(seqs)
            self.metrics.prompt_tokens += len(request.prompt)
            self.wake.notify()

    def start(self):
        self.thread = threading.Thread(target=self._loop, name="codelm-scheduler", daemon=True)
        self.thread.start()

    def stop(self):
        with self.wake:
            self.stopped = True
            self.wake.notify()
        if self.thread is not None:
            self.thread.join()

    def _loop(self):
        while True:
            with self.wake:
                while not self.stopped and not self.waiting and not self.running:
                    self.wake.wait()
                if self.stopped:
                    return
            self.step()

    @torch.no_grad()
    def step(self):
        """Admit; then one forward that decodes a token for every prefilled sequence and prefills the rest
        within the token budget."""
        self._drop_cancelled()
        self._admit()
        work = [(s, len(s.tokens) - s.cached) for s in self.running if s.prefilled]  # 1, or forced tokens too
        budget = self.step_tokens - sum(count for _, count in work)
        for seq in [s for s in self.running if not s.prefilled]:
            if budget <= 0:
                break
            if not seq.matched:
                self._match_prefix(seq)
            count = min(seq.prompt_len - seq.cached, budget)
            work.append((seq, count))
            budget -= count
        if work:
            self._run(work)
        self.metrics.steps += 1

    def _drop_cancelled(self):
        with self.wake:
            self.waiting = deque(s for s in self.waiting if not s.request.cancelled)
        for seq in [s for s in self.running if s.request.cancelled]:
            self._leave(seq)

    def _admit(self):
        outstanding = sum(s.outstanding() for s in self.running)
        with self.wake:
            while self.waiting and len(self.running) < self.max_seqs:
                seq = self.waiting[0]
                if self.pool.available() - outstanding < seq.blocks_needed:
                    break  # first come, first served: the head waits for blocks, nobody overtakes it
                self.waiting.popleft()
                self.running.append(seq)
                outstanding += seq.blocks_needed

    def _leave(self, seq: Sequence):
        self.pool.release(seq.blocks)
        seq.blocks = []
        self.running.remove(seq)

    def _fail(self, seqs: list[Sequence], error: Exception):
        """An internal error fails the sequences it touched, and only those."""
        for seq in seqs:
            if seq in self.running:
                self._leave(seq)
            seq.request.emit(Event(seq.sample, finish_reason="error", error=f"{type(error).__name__}: {error}"))

    def _grow(self, seq: Sequence, upto: int):
        """Blocks for positions below `upto` (reserved at admission, so always there)."""
        while len(seq.blocks) * self.pool.block_size < upto:
            seq.blocks.append(self.pool.allocate())

    def _cached(self, seq: Sequence, count: int):
        """`count` more tokens of seq are in its blocks: index the blocks that became full."""
        seq.cached += count
        size = self.pool.block_size
        final = seq.cached if seq.checker is None else min(seq.cached, seq.prompt_len)  # see the module's note
        for i in range(len(seq.keys), final // size):
            seq.keys.append(chain_key(seq.keys[-1] if seq.keys else b"", seq.tokens[i * size:(i + 1) * size]))
            self.pool.index(seq.blocks[i], seq.keys[i])

    def _match_prefix(self, seq: Sequence):
        """Reuse cached blocks for the prompt's full blocks, keeping at least its last token to prefill (its
        logits choose the first new token)."""
        seq.matched = True
        if seq.request.prompt_logprobs:
            return  # every prompt position's logits are wanted
        size, keys = self.pool.block_size, []
        for i in range((seq.prompt_len - 1) // size):
            keys.append(chain_key(keys[-1] if keys else b"", seq.tokens[i * size:(i + 1) * size]))
        seq.blocks = self.pool.match(keys)
        seq.keys = keys[:len(seq.blocks)]
        seq.cached = len(seq.blocks) * size
        self.metrics.cached_prompt_tokens += seq.cached

    @staticmethod
    def _logits_wanted(seq: Sequence, count: int) -> int:
        """Rows of logits seq needs from a step that caches `count` more of its tokens: every prompt position
        of the chunk for prompt logprobs, else the last one once the prompt is done (it picks the next token)."""
        if not seq.prefilled and seq.request.prompt_logprobs:
            return count
        return 1 if seq.cached + count >= seq.prompt_len else 0

    def _run(self, work: list[tuple[Sequence, int]]):
        """One forward over every sequence's next `count` tokens (1 when decoding, a chunk when prefilling)."""
        seqs = [seq for seq, _ in work]
        try:
            tokens, select = [], []
            for seq, count in work:
                self._grow(seq, seq.cached + count)
                tokens += seq.tokens[seq.cached:seq.cached + count]
                select += range(len(tokens) - self._logits_wanted(seq, count), len(tokens))
            view = BatchView(self.pool, [s.blocks for s in seqs], [s.cached for s in seqs], [c for _, c in work])
            device = self.engine.device
            logits = self.engine.model.decode_step(torch.tensor([tokens], device=device), view, view.positions,
                                                   select=torch.tensor(select, dtype=torch.long, device=device)).float()
        except Exception as e:  # noqa: BLE001 - the step's sequences fail, the server goes on
            self._fail(seqs, e)
            return
        decoding = sum(seq.prefilled for seq in seqs)
        if decoding:
            self.metrics.batch_sizes.observe(decoding)
        row = 0
        for seq, count in work:
            try:
                wanted = self._logits_wanted(seq, count)
                rows, row = logits[row:row + wanted], row + wanted
                if not seq.prefilled and seq.request.prompt_logprobs:
                    self._record_prompt_logprobs(seq, rows, count)
                self._cached(seq, count)
                if seq.prefilled and wanted:
                    self._accept(seq, rows[-1])
            except Exception as e:  # noqa: BLE001 - one request's failure must not stop the server
                self._fail([seq], e)

    def _record_prompt_logprobs(self, seq: Sequence, logits: torch.Tensor, count: int):
        """Logprobs of the prompt tokens this chunk's logits (count, V) predict."""
        logprobs = logits.log_softmax(-1)
        for t in range(count):
            position = seq.cached + t + 1
            if position < seq.prompt_len:
                seq.prompt_logprobs.append(self._logprob(logprobs[t], seq.tokens[position], seq.request.logprobs))

    @staticmethod
    def _logprob(logprobs: torch.Tensor, token: int, top: int | None) -> TokenLogprob:
        best = []
        if top:
            values, ids = logprobs.topk(top)
            best = list(zip(ids.tolist(), values.tolist()))
        return TokenLogprob(token, float(logprobs[token]), best)

    def _fast_forward(self, seq: Sequence) -> str:
        """The tokens seq's grammar now forces join it without a step of their own: the next step feeds them
        with the sampled one in one chunk. Their text; not when the request wants logprobs (each token then
        gets its own event, scored by its own step)."""
        if seq.request.logprobs is not None or seq.tracker.stopped:
            return ""
        text = ""
        for token in seq.matcher.forced()[:seq.request.max_new_tokens - seq.generated]:
            seq.matcher.accept(token)
            seq.tokens.append(token)
            seq.generated += 1
            self.metrics.generation_tokens += 1
            text += seq.tracker.push(token)
            if seq.tracker.stopped:
                break
        return text

    def _checked(self, seq: Sequence, event: Event) -> bool:
        """The Python-syntax check after seq's newest token: True when seq went back (it then feeds its last
        kept token again); else the event's text is held back until the end, then all of it."""
        ended = event.finish_reason == "stop"
        back = seq.checker.after(seq.tokens[seq.prompt_len:], 1, seq.tracker.text if ended else None)
        if back is None:
            event.text = seq.tracker.text if event.finish_reason else ""
            seq.tracker.flush()  # nothing is held back any more: the whole text goes now or at the end
            return False
        del seq.tokens[seq.prompt_len + back.keep:]
        seq.generated = back.keep
        seq.cached = len(seq.tokens) - 1  # blocks past the prompt are never indexed, so rewriting them is safe
        seq.tracker = StopTracker.replayed(self.engine.tok, seq.tracker.stops, seq.tokens[seq.prompt_len:])
        return True

    def _choose(self, seq: Sequence, logits: torch.Tensor) -> int:
        """The next token from fp32 logits (V,), as Engine._choose picks it for this sample."""
        params = seq.request.params
        row = mask_logits(logits[None], [seq.matcher], [seq.request.max_new_tokens - seq.generated])
        if seq.checker is not None:
            row = without(row, [seq.checker.banned(seq.generated)])
        if params.repetition_penalty != 1.0:
            history = torch.tensor([seq.tokens], device=row.device)
            chain = processors(params, history, torch.ones_like(history, dtype=torch.bool))
        else:
            chain = processors(params)
        processed = apply_processors(row, chain)
        if params.strategy == "greedy":
            return int(processed.argmax(-1))
        return int(sample_rows(processed.softmax(-1), [seq.generator]))

    def _accept(self, seq: Sequence, logits: torch.Tensor):
        """Choose seq's next token, emit its text, and end the sequence on a stop or at its limit."""
        token = self._choose(seq, logits)
        seq.tokens.append(token)
        seq.generated += 1
        self.metrics.generation_tokens += 1
        event = Event(seq.sample)
        if seq.request.logprobs is not None:
            event.token = self._logprob(logits.log_softmax(-1), token, seq.request.logprobs)
        if seq.first_token_at is None:
            seq.first_token_at = time.perf_counter()
            self.metrics.ttft.observe(seq.first_token_at - seq.request.arrival)
            if seq.request.prompt_logprobs:
                event.prompt_logprobs = seq.prompt_logprobs
        tracker, stop_ids = seq.tracker, self.engine.tok.stop_ids
        event.text = "" if token in stop_ids else tracker.push(token)
        if seq.matcher is not None and token not in stop_ids:
            seq.matcher.accept(token)
            event.text += self._fast_forward(seq)
        if token in stop_ids or tracker.stopped or seq.matcher is not None and seq.matcher.done:
            event.finish_reason = "stop"
        elif seq.generated >= seq.request.max_new_tokens:
            event.finish_reason = "length"
        if seq.checker is not None and self._checked(seq, event):
            return  # it went back: nothing to say yet
        event.generated = seq.generated
        if event.finish_reason:
            event.text += tracker.flush()
            self._leave(seq)
        seq.request.emit(event)
