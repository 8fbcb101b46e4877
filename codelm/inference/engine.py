"""The generation engine: the CLI, the speedrun's samples and the evaluator all decode through it.

One prefill forward per batch of prompts (left-padded to one length), then one
token per step through the KV cache, until max_new_tokens or the end of the
model's context, whichever comes first (a prompt's budget never depends on its
batch mates). n samples of a prompt share its prefill:
the cache rows are copied after it. Rows that finish leave the batch, so a long
sample never makes short ones pay for its steps. Beam search runs one prompt at
a time with its beams as the batch.

Two speed options for decoding (docs/results/serving.md has the measured figures):
`quantize="int8"` (weight-only int8, codelm.inference.quant) and `compile=True`
(the one-token step runs through torch.compile on a fixed-shape view of the cache,
cache.SlotView; CUDA graphs on GPU). `from_checkpoint(dtype="auto")` times a
decode step in each precision the device supports and takes the fastest.

    engine = Engine.from_checkpoint("runs/x")
    [[c]] = engine.generate(["def fib(n):"], SamplingParams(max_new_tokens=64, stop=["\\ndef"]))
    print(c.text, c.finish_reason)
"""

import copy
import hashlib
import sys
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from codelm.checkpoint import load_model
from codelm.data.fim import fim_prompt
from codelm.errors import UserError
from codelm.inference.cache import KVCache, SlotView
from codelm.inference.constraints import ByteVocabulary, Grammar, Matcher, mask_logits
from codelm.inference.quant import quantize_int8
from codelm.inference.sampling import (
    SamplingParams,
    apply_processors,
    processors,
    sample_rows,
)
from codelm.inference.stops import StopTracker, first_stop
from codelm.inference.syntax import PythonSyntax, SyntaxChecker, without
from codelm.model.llama import Transformer
from codelm.model.lora import lora_spec, merge_and_unload
from codelm.precision import DTYPES, PrecisionChoice, choose_precision
from codelm.tokenizer import Tokenizer

TextCallback = Callable[[int, int, str], None]  # (prompt index, sample index, new text)
# Weight and cache precisions by name are precision.DTYPES. fp64 is for exact comparisons: CPU matmul kernels sum
# in an order that depends on the batch shape, so fp32 logits of one prompt move by ~1e-5 with its batch mates and
# a near-tie can flip a greedy choice; in fp64 those differences vanish when the logits are rounded to fp32.
QUANTIZE = (None, "int8")


def log(message: str):
    """Engine set-up lines go to stderr: stdout carries the generated text."""
    print(message, file=sys.stderr, flush=True)


@dataclass
class Completion:
    text: str  # decoded, cut before any stop string; special tokens at the end are not included
    token_ids: list[int]  # every generated token, the one that ended generation included
    logprobs: list[float] = field(default_factory=list)  # of each token under the model, before any processor
    finish_reason: str = "length"  # "stop": end-of-text token or stop string; "length": max_new_tokens or context full
    score: float | None = None  # beam search: length-normalized log-probability
    cut: str | None = None  # set when the context could not hold max_new_tokens: a one-line note to show
    backtracks: int = 0  # times a Python-syntax constraint sent the sequence back


def fork_per_row(grammar: Grammar | None, n: int, prompts: int) -> list[Matcher | None]:
    """A matcher per batch row: the n samples of a prompt fork one (never shared), none without a grammar."""
    if grammar is None:
        return [None] * (n * prompts)
    rows = []
    for _ in range(prompts):
        first = grammar.matcher()
        rows += [first, *(first.fork() for _ in range(n - 1))]
    return rows


def sample_seed(seed: int, prompt: list[int], sample: int) -> int:
    """Seed of sample j of a prompt: fixed by (seed, prompt, j), whatever else is in the batch."""
    digest = hashlib.blake2b(array("q", [seed, sample, *prompt]).tobytes(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def slot_step(model: Transformer, tokens, positions, k, v, valid, slot) -> torch.Tensor:
    """fp32 logits (B, V) of one new token per row (tokens, positions: (B, 1)) written at cache slot `slot`.

    Every input keeps its shape from one step to the next (the slot is a tensor), so
    torch.compile captures this once per batch size class, not once per step."""
    return model.decode_step(tokens, SlotView(k, v, valid, slot), positions, last_only=True).float()


def decode_precision(requested: str, model: Transformer, quantize: str | None = None) -> PrecisionChoice:
    """`requested`, or with "auto" the precision whose batch-1 decode step of this model is fastest here."""
    device = next(model.parameters()).device
    prompt = torch.zeros(1, min(32, model.config.max_seq_len - 1), dtype=torch.long, device=device)

    def make_step(precision: str):
        trial = copy.deepcopy(model).to(DTYPES[precision])
        if quantize:
            quantize_int8(trial)
        cache = KVCache(model.config, 1, prompt.shape[1] + 1, DTYPES[precision], device)

        @torch.no_grad()
        def step():
            cache.truncate(0)
            trial.decode_step(prompt, cache, last_only=True)
            trial.decode_step(prompt[:, :1], cache, last_only=True)
        return step

    c = model.config
    shape = f"d{c.dim} L{c.n_layers} h{c.n_heads}/{c.n_kv_heads} f{c.hidden_dim} v{c.vocab_size} {quantize or 'fp'}"
    return choose_precision(requested, device, "decode", shape, make_step, log=log)


class Engine:
    def __init__(self, model: Transformer, tokenizer: Tokenizer, quantize: str | None = None, compile: bool = False):
        """quantize "int8": weight-only int8 Linear layers (in place); compile: the decode step through
        torch.compile."""
        if quantize not in QUANTIZE:
            raise UserError(f"quantize must be one of {QUANTIZE}, got {quantize!r}")
        if quantize:
            quantize_int8(model)
        self.model = model.eval()
        self.tok = tokenizer
        param = next(model.parameters())
        self.device, self.dtype = param.device, param.dtype
        self._step = None
        self._byte_vocab = None  # llguidance's view of the tokenizer, built on the first constraint
        self._line_ends = None  # the tokens holding a newline, found on the first Python-syntax constraint
        if compile:  # CUDA graphs replay the whole step on GPU; inductor's C++ kernels on CPU
            self._step = torch.compile(slot_step, mode="reduce-overhead" if self.device.type == "cuda" else None)

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        dtype: torch.dtype | str = "auto",
        device: str = "cpu",
        quantize: str | None = None,
        compile: bool = False,
    ) -> "Engine":
        """dtype: "auto" (the fastest decode step here, probed once per machine and cached), a name, or a torch.dtype.

        A LoRA adapter checkpoint is merged into its base (in fp32) first: one matmul per layer instead of three,
        and int8 or a compiled step then see plain Linear layers."""
        model, tok, _ = load_model(path, device=device)
        if lora_spec(model) is not None:
            merge_and_unload(model)
        if isinstance(dtype, str):
            choice = decode_precision(dtype, model, quantize)
            log(
                f"{choice.describe()}{', int8 weights' if quantize else ''}"
                f"{', compiled decode step' if compile else ''}"
            )
            dtype = DTYPES[choice.precision]
        return cls(model.to(dtype), tok, quantize, compile)

    def encode(self, prompt: str) -> list[int]:
        """A text prompt as the start of a document."""
        return [*self.tok.prefix_ids, *self.tok.encode(prompt)]

    def generate(
        self, prompts: list[str | list[int]], params: SamplingParams, on_text: TextCallback | None = None,
        grammar: Grammar | PythonSyntax | None = None,
    ) -> list[list[Completion]]:
        """params.n completions for each prompt (text, or token ids used as they are), each under its own
        matcher of `grammar`, or its own checker of a Python-syntax constraint, when one is given (the
        checked text then reaches `on_text` when the sequence ends, never before).

        A prompt gets max_new_tokens, or fewer when the context fills first (see `budget`)."""
        ids = [self.encode(p) if isinstance(p, str) else list(p) for p in prompts]
        budgets = [self.budget(p, params.max_new_tokens) for p in ids]
        if params.strategy == "beam":
            if isinstance(grammar, PythonSyntax):
                raise UserError("the Python-syntax constraint works with greedy decoding and sampling, not beams")
            return [self._beam_search(p, params, *b, grammar) for p, b in zip(ids, budgets)]
        return self._decode(ids, params, budgets, on_text, grammar)

    def constraint(self, kind: str, spec) -> Grammar | PythonSyntax:
        """A grammar over this engine's tokenizer, checked once (UserError naming what is wrong); or, for kind
        "python", Python syntax for a completion that continues the prompt's code (spec "prompt") or is a
        program by itself (spec "reply", e.g. a chat reply)."""
        if kind == "python":
            if spec not in ("prompt", "reply"):
                raise UserError(f"python: say whether the code continues the prompt or is the reply, not {spec!r}")
            if self._line_ends is None:
                self._line_ends = PythonSyntax.line_ends(self.tok)
            return PythonSyntax(self.tok, self._line_ends, continues_prompt=spec == "prompt")
        if self._byte_vocab is None:
            self._byte_vocab = ByteVocabulary(self.tok, self.model.config.vocab_size)
        return Grammar(kind, spec, self._byte_vocab)

    def complete_middle(self, prefix: str, suffix: str, params: SamplingParams) -> list[Completion]:
        """Fill-in-the-middle: completions of the PSM prompt, ending at end-of-text."""
        return self.generate([fim_prompt(prefix, suffix, self.tok)], params)[0]

    def budget(self, prompt: list[int], max_new_tokens: int) -> tuple[int, str | None]:
        """New tokens for `prompt`: max_new_tokens, or what the context has left, with a note saying so.

        UserError for an empty prompt or one that leaves no room for a new token."""
        context = self.model.config.max_seq_len
        if not prompt:
            raise UserError("empty prompt: give at least one token")
        room = context - len(prompt)
        if room < 1:
            raise UserError(
                f"the prompt is {len(prompt)} tokens: the model's context of {context} has no room for a new one"
            )
        if max_new_tokens <= room:
            return max_new_tokens, None
        return room, f"max_new_tokens {max_new_tokens} cut to {room}: the context holds {context} tokens"

    @torch.no_grad()
    def forward(
        self,
        tokens: torch.Tensor,
        cache: KVCache,
        positions: torch.Tensor | None = None,
        valid: torch.Tensor | None = None,
        last_only: bool = True,
    ) -> torch.Tensor:
        """fp32 logits of the new tokens (B, V) for the last position, else (B, T, V); the cache advances past them."""
        return self.model.decode_step(tokens, cache, positions, valid, last_only).float()

    @torch.no_grad()
    def step(self, tokens: torch.Tensor, positions: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """fp32 logits (B, V) after one more token per row (tokens, positions: (B,)): the decoding hot loop."""
        if self._step is None:
            return self.forward(tokens[:, None], cache, positions[:, None])
        if cache.length >= cache.max_len:
            raise UserError(f"the cache holds {cache.max_len} tokens; {cache.length + 1} were asked for")
        slot = torch.tensor([cache.length], device=self.device)
        for t in (tokens, positions, cache.valid, *cache.k, *cache.v):  # one compiled step for any batch size
            torch._dynamo.maybe_mark_dynamic(t, 0)
        for t in (cache.valid, *cache.k, *cache.v):  # and any cache length: valid (B, L), keys/values (B, H, L, D)
            torch._dynamo.maybe_mark_dynamic(t, 1 if t.dim() == 2 else 2)
        logits = self._step(self.model, tokens[:, None], positions[:, None], cache.k, cache.v, cache.valid, slot)
        cache.advance(1)  # the compiled step wrote slot `cache.length` through a SlotView, which cannot advance
        return logits

    def new_cache(self, batch: int, max_len: int) -> KVCache:
        return KVCache(self.model.config, batch, max_len, self.dtype, self.device)

    def prefill(self, prompts: list[list[int]], max_new_tokens: int) -> tuple[KVCache, torch.Tensor, torch.Tensor]:
        """Left-pad, run the prompts in one forward: (cache, last logits (B, V), next positions (B,))."""
        length = max(len(p) for p in prompts)
        cache = self.new_cache(len(prompts), length + max_new_tokens)
        tokens = torch.zeros(len(prompts), length, dtype=torch.long, device=self.device)
        valid = torch.zeros(len(prompts), length, dtype=torch.bool, device=self.device)
        for i, p in enumerate(prompts):
            tokens[i, length - len(p) :] = torch.tensor(p)
            valid[i, length - len(p) :] = True
        positions = (valid.long().cumsum(1) - 1).clamp(min=0)
        logits = self.forward(tokens, cache, positions, valid)
        return cache, logits, positions[:, -1] + 1

    def _decode(
        self,
        prompts: list[list[int]],
        params: SamplingParams,
        budgets: list[tuple[int, str | None]],
        on_text: TextCallback | None,
        constraint: Grammar | PythonSyntax | None = None,
    ):
        cache, logits, next_pos = self.prefill(prompts, max(limit for limit, _ in budgets))
        n = params.n
        if n > 1:  # the samples of a prompt share its prefill
            copies = torch.arange(len(prompts), device=self.device).repeat_interleave(n)
            cache.select(copies)
            logits, next_pos = logits[copies], next_pos[copies]
        rows = [(i, j) for i in range(len(prompts)) for j in range(n)]  # (prompt, sample) of each batch row
        generators = [
            torch.Generator(device=self.device).manual_seed(sample_seed(params.seed, prompts[i], j)) for i, j in rows
        ]
        trackers = [StopTracker(self.tok, params.stop) for _ in rows]
        limits = [budgets[i][0] for i, _ in rows]
        results = [Completion("", [], cut=budgets[i][1]) for i, _ in rows]
        matchers = fork_per_row(constraint if isinstance(constraint, Grammar) else None, n, len(prompts))
        checkers = self._checkers(constraint, prompts, n)
        active = list(range(len(rows)))  # batch row b is rows[active[b]]
        while True:  # until every row has finished
            history = None
            if params.repetition_penalty != 1.0:
                history = [prompts[rows[r][0]] + results[r].token_ids for r in active]
            allowed = mask_logits(logits, [matchers[r] for r in active],
                                  [limits[r] - len(results[r].token_ids) for r in active])
            allowed = without(allowed, [checkers[r].banned(len(results[r].token_ids)) if checkers[r] else set()
                                        for r in active])
            tokens = self._choose(allowed, params, history, [generators[r] for r in active])
            logprobs = logits.log_softmax(-1).gather(1, tokens[:, None])[:, 0].tolist()
            keep, feeds, closing = [], [], set()
            for b, r in enumerate(active):
                before = len(results[r].token_ids)
                feed = self._advance(matchers[r], int(tokens[b]), limits[r] - before - 1)
                finished, delta = self._record(results[r], trackers[r], feed, logprobs[b], limits[r], matchers[r])
                taken = results[r].token_ids[before:]
                if checkers[r] is not None:
                    ended = finished and results[r].finish_reason == "stop"
                    back = checkers[r].after(results[r].token_ids, len(taken), trackers[r].text if ended else None)
                    if back is not None:
                        trackers[r], refeed = self._go_back(results[r], back.keep, params.stop,
                                                            prompts[rows[r][0]], cache, b, next_pos)
                        finished, taken = False, [refeed]
                    delta = trackers[r].text if finished else ""
                if not finished or len(taken) > 1:  # a row that ended on forced tokens stays to have them scored
                    keep.append(b)
                    feeds.append(taken)
                    closing.update([r] if finished else [])
                if delta and on_text is not None:
                    on_text(*rows[r], delta)
            if not keep:
                break
            active, next_pos = self._keep(keep, active, cache, next_pos)
            logits, next_pos = self._feed(feeds, next_pos, cache, [results[r] for r in active])
            if closing:
                still = [b for b, r in enumerate(active) if r not in closing]
                if not still:
                    break
                logits = logits[torch.tensor(still, device=self.device)]
                active, next_pos = self._keep(still, active, cache, next_pos)
        for result, tracker in zip(results, trackers):
            result.text = tracker.text
        return [results[i * n : (i + 1) * n] for i in range(len(prompts))]

    def _checkers(self, constraint, prompts: list[list[int]], n: int) -> list[SyntaxChecker | None]:
        """Each row's Python-syntax checker (None under any other constraint, or none); a prompt is decoded and
        checked once for its n samples."""
        if not isinstance(constraint, PythonSyntax):
            return [None] * (len(prompts) * n)
        checkers = []
        for prompt in prompts:
            first = constraint.checker(self.tok.hf.decode(prompt, skip_special_tokens=True)
                                       if constraint.continues_prompt else "")
            checkers += [first, *(SyntaxChecker(constraint, first.prefix) for _ in range(n - 1))]
        return checkers

    def _go_back(self, result: Completion, keep: int, stops: list[str], prompt: list[int], cache: KVCache, b: int,
                 next_pos: torch.Tensor) -> tuple[StopTracker, int]:
        """Rewind batch row b to its first `keep` generated tokens: (its new stop tracker, the token to feed
        again). The cache forgets the row's slots from that token's on, and the token goes in again at its
        position, so the next logits are the ones after it."""
        del result.token_ids[keep:], result.logprobs[keep:]
        result.finish_reason, result.backtracks = "length", result.backtracks + 1
        tracker = StopTracker.replayed(self.tok, stops, result.token_ids)
        position = len(prompt) + keep - 1  # every token of a row has one valid slot, in order
        slot = int(cache.valid[b].nonzero()[position])
        cache.valid[b, slot:] = False
        next_pos[b] = position
        return tracker, [*prompt, *result.token_ids][position]

    def _keep(self, keep: list[int], active: list[int], cache: KVCache, next_pos: torch.Tensor):
        """Only batch rows `keep` go on (finished rows leave the batch): (their row ids, their next positions)."""
        if len(keep) == len(active):
            return active, next_pos
        index = torch.tensor(keep, device=self.device)
        cache.select(index)
        return [active[b] for b in keep], next_pos[index]

    def _advance(self, matcher: Matcher | None, token: int, room: int) -> list[int]:
        """A row's sampled token and the tokens its grammar then forces (at most `room`), the matcher past them."""
        if matcher is None or token in self.tok.stop_ids:
            return [token]
        matcher.accept(token)
        forced = matcher.forced()[:room]
        for t in forced:
            matcher.accept(t)
        return [token, *forced]

    def _record(self, result: Completion, tracker: StopTracker, feed: list[int], logprob: float, limit: int,
                matcher: Matcher | None) -> tuple[bool, str]:
        """Append a row's new tokens (the sampled one, then any forced ones); (finished?, new text)."""
        delta = ""
        for i, token in enumerate(feed):
            result.token_ids.append(token)
            if i == 0:
                result.logprobs.append(logprob)  # forced tokens get theirs when _feed scores them
            delta += "" if token in self.tok.stop_ids else tracker.push(token)
            if token in self.tok.stop_ids or tracker.stopped:
                result.finish_reason = "stop"
                return True, delta + tracker.flush()
        if matcher is not None and matcher.done:  # the grammar is complete: nothing may follow
            result.finish_reason = "stop"
            return True, delta + tracker.flush()
        if len(result.token_ids) >= limit:
            return True, delta + tracker.flush()
        return False, delta

    def _feed(self, feeds: list[list[int]], next_pos: torch.Tensor, cache: KVCache, results: list[Completion]):
        """Logits after feeding each row its new tokens: one decode step, or, when a grammar forced tokens,
        one forward of the rows' tokens left-padded to the longest (forced tokens cost no extra step)."""
        width = max(len(f) for f in feeds)
        cache.reserve(width)
        if width == 1:
            tokens = torch.tensor([f[0] for f in feeds], device=self.device)
            return self.step(tokens, next_pos, cache), next_pos + 1
        tokens = torch.zeros(len(feeds), width, dtype=torch.long, device=self.device)
        valid = torch.zeros(len(feeds), width, dtype=torch.bool, device=self.device)
        for b, f in enumerate(feeds):
            tokens[b, width - len(f):], valid[b, width - len(f):] = torch.tensor(f), True
        positions = (next_pos[:, None] + (valid.long().cumsum(1) - 1).clamp(min=0))
        logits = self.forward(tokens, cache, positions, valid, last_only=False)
        logprobs = logits.log_softmax(-1)
        for b, (f, result) in enumerate(zip(feeds, results)):
            for i in range(1, len(f)):  # each forced token, scored by the model at the position before it
                result.logprobs.append(float(logprobs[b, width - len(f) + i - 1, f[i]]))
        return logits[:, -1], next_pos + valid.sum(1)

    def _choose(self, logits, params, history: list[list[int]] | None, generators) -> torch.Tensor:
        """Next token per row; history (prompt + generated ids per row) only for the repetition penalty."""
        if history is not None:
            width = max(len(h) for h in history)
            ids = torch.zeros(len(history), width, dtype=torch.long, device=self.device)
            mask = torch.zeros(len(history), width, dtype=torch.bool, device=self.device)
            for b, h in enumerate(history):
                ids[b, : len(h)], mask[b, : len(h)] = torch.tensor(h), True
            chain = processors(params, ids, mask)
        else:
            chain = processors(params)
        processed = apply_processors(logits, chain)
        if params.strategy == "greedy":
            return processed.argmax(-1)
        return sample_rows(processed.softmax(-1), generators)

    def _beam_search(self, prompt: list[int], params: SamplingParams, limit: int, cut: str | None,
                     grammar: Grammar | None = None) -> list[Completion]:
        """Beam search with length penalty, `limit` new tokens at most; the best params.n hypotheses, best first.
        Under a grammar each beam has its own matcher, forked from its parent's; a complete one finishes."""
        width, alpha = params.num_beams, params.length_penalty
        cache, logits, next_pos = self.prefill([prompt], limit)
        cache.select(torch.zeros(width, dtype=torch.long, device=self.device))
        logits, next_pos = logits.expand(width, -1), next_pos.expand(width)
        scores = torch.full((width,), float("-inf"), device=self.device)
        scores[0] = 0.0  # all beams start equal: expand only the first
        beams: list[tuple[list[int], list[float]]] = [([], [])] * width
        matchers = fork_per_row(grammar, width, 1)
        finished: list[Completion] = []

        def normalized(score: float, length: int) -> float:
            return score / length**alpha

        for step in range(limit):
            masked = mask_logits(logits, matchers, [limit - step] * len(matchers))
            logprobs = apply_processors(masked, processors(params)).log_softmax(-1)
            candidates = (scores[:, None] + logprobs).flatten()
            top_scores, top_index = candidates.topk(min(2 * width, candidates.numel()))
            survivors = []
            for rank, (score, index) in enumerate(zip(top_scores.tolist(), top_index.tolist())):
                if score == float("-inf"):  # only forbidden tokens are left
                    break
                beam, token = divmod(index, logprobs.shape[1])
                ids, lps = beams[beam]
                ids, lps = ids + [token], lps + [float(logprobs[beam, token])]
                text, stopped = self._beam_text(ids, params.stop)
                child = None if matchers[beam] is None else matchers[beam].fork()
                if child is not None and token not in self.tok.stop_ids:
                    child.accept(token)
                    stopped = stopped or child.done
                if stopped:
                    if rank < width:  # as in HF: a hypothesis ends only from the top `width` candidates
                        finished.append(Completion(text, ids, lps, "stop", normalized(score, len(ids)), cut=cut))
                else:
                    survivors.append((beam, token, score, ids, lps, child))
                if len(survivors) == width:
                    break
            finished = sorted(finished, key=lambda c: -c.score)[:width]
            if not survivors:
                break
            best_running = max(s[2] for s in survivors)
            if len(finished) == width and (
                params.early_stopping or finished[-1].score >= normalized(best_running, step + 1)
            ):
                break
            if step == limit - 1:
                for _, _, score, ids, lps, _ in survivors:
                    finished.append(
                        Completion(
                            self._beam_text(ids, [])[0], ids, lps, "length", normalized(score, len(ids)), cut=cut
                        )
                    )
                break
            cache.select(torch.tensor([s[0] for s in survivors], device=self.device))
            scores = torch.tensor([s[2] for s in survivors], device=self.device)
            beams = [(s[3], s[4]) for s in survivors]
            matchers = [s[5] for s in survivors]
            tokens = torch.tensor([s[1] for s in survivors], device=self.device)
            next_pos = next_pos[: len(survivors)]  # a grammar may leave fewer beams than the width
            logits = self.step(tokens, next_pos, cache)
            next_pos = next_pos + 1
        return sorted(finished, key=lambda c: -c.score)[: params.n]

    def _beam_text(self, ids: list[int], stops: list[str]) -> tuple[str, bool]:
        """Decoded text of a hypothesis, cut at a stop string; whether it has ended."""
        if ids[-1] in self.tok.stop_ids:
            return self.tok.decode(ids[:-1]), True
        text = self.tok.decode(ids)
        cut = first_stop(text, stops)
        return (text[:cut], True) if cut is not None else (text, False)
