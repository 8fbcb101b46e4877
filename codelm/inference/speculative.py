"""Speculative decoding (Leviathan et al. 2023; Chen et al. 2023), one sequence at a time.

A drafter proposes k tokens; the target scores all of them in one forward. Token
x_i is accepted with probability min(1, p_i(x_i) / q_i(x_i)); the first rejected
one is replaced by a draw from norm(max(0, p_i - q_i)), and when all k pass, one
more token comes from p_{k+1}. The output then has exactly the target's
distribution (p after the sampling processors), and under greedy decoding (p, q
one-hot) exactly the target's greedy text.

Two drafters:
- `DraftModel`: a smaller model with the same tokenizer, with its own KV cache.
- `PromptLookup` (Saxena 2023): copy what followed the latest earlier occurrence
  of the last few tokens in the prompt or the text so far. q is one-hot, so
  x is accepted with probability p(x). No second model; strong when the output
  repeats its input, as code edits do.

Caches: the target's holds every token of the context but the last, which is
fed with the drafts; after a round both caches are cut back to the accepted text.
"""

from dataclasses import dataclass

import torch

from codelm.config import SamplingParams
from codelm.errors import UserError
from codelm.inference.constraints import Grammar, Matcher, mask_logits
from codelm.inference.engine import Completion, Engine
from codelm.inference.sampling import apply_processors, processors
from codelm.inference.stops import StopTracker


@dataclass
class SpeculativeStats:
    proposed: int = 0
    accepted: int = 0
    target_forwards: int = 0
    tokens: int = 0

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / max(self.proposed, 1)

    @property
    def tokens_per_forward(self) -> float:
        return self.tokens / max(self.target_forwards, 1)


def distribution(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """What the sampler draws from: probabilities after the processors; one-hot argmax when greedy."""
    if params.strategy == "greedy":
        return torch.nn.functional.one_hot(logits.argmax(-1), logits.shape[-1]).float()
    return apply_processors(logits, processors(params)).softmax(-1)


def verify(drafts: list[int], q: torch.Tensor | None, p: torch.Tensor, generator: torch.Generator) -> list[int]:
    """The accepted drafts plus one token drawn from the target (a correction or the bonus).

    drafts: k proposed ids; q: (k, V) drafter probabilities, None for a deterministic
    drafter (one-hot); p: (k + 1, V) target probabilities at each draft and after the last."""
    out = []
    for i, x in enumerate(drafts):
        q_i = q[i] if q is not None else torch.nn.functional.one_hot(torch.tensor(x), p.shape[-1]).float()
        ratio = float(p[i, x]) / max(float(q_i[x]), 1e-20)
        if ratio >= 1 or float(torch.rand((), generator=generator)) < ratio:
            out.append(x)
            continue
        residual = (p[i] - q_i).clamp(min=0)
        total = float(residual.sum())
        residual = residual / total if total > 0 else p[i]
        out.append(int(torch.multinomial(residual, 1, generator=generator)))
        return out
    out.append(int(torch.multinomial(p[len(drafts)], 1, generator=generator)))
    return out


class PromptLookup:
    """Propose the continuation of the latest earlier match of the context's last n tokens."""

    def __init__(self, max_ngram: int = 3):
        self.max_ngram = max_ngram

    def start(self, prompt: list[int], max_len: int):
        pass

    def propose(self, context: list[int], k: int, params: SamplingParams, generator) -> tuple[list[int], None]:
        for n in range(min(self.max_ngram, len(context) - 1), 0, -1):
            tail = context[-n:]
            for start in range(len(context) - n - 1, -1, -1):
                if context[start:start + n] == tail:
                    return context[start + n:start + n + k], None
        return [], None

    def rollback(self, length: int):
        pass


class DraftModel:
    """A smaller model with the same tokenizer; its cache holds a prefix of the context."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self.cache = None

    def start(self, prompt: list[int], max_len: int):
        self.cache = self.engine.new_cache(1, max_len)

    def propose(self, context: list[int], k: int, params: SamplingParams, generator) -> tuple[list[int], torch.Tensor]:
        pending = context[self.cache.length:]  # catch up on tokens the drafter has not seen
        logits = self.engine.forward(torch.tensor([pending], device=self.engine.device), self.cache)
        drafts, qs = [], []
        for i in range(k):
            q = distribution(logits, params)[0]
            token = (
                int(q.argmax()) if params.strategy == "greedy" else int(torch.multinomial(q, 1, generator=generator))
            )
            drafts.append(token)
            qs.append(q)
            if i < k - 1:
                logits = self.engine.forward(torch.tensor([[token]], device=self.engine.device), self.cache)
        return drafts, torch.stack(qs)

    def rollback(self, length: int):
        self.cache.truncate(min(length, self.cache.length))


def draft_masks(matcher: Matcher | None, drafts: list[int]) -> list[Matcher | None]:
    """The grammar's state before each draft position and after the last valid draft, as matchers for
    mask_logits; positions past the first draft the grammar refuses are never reached (verify rejects it)."""
    if matcher is None:
        return [None] * (len(drafts) + 1)
    valid = matcher.valid_prefix(drafts)
    states, walker = [], matcher.fork()
    for i in range(len(drafts) + 1):
        states.append(walker.fork() if i <= valid else None)
        if i < valid:
            walker.accept(drafts[i])
    return states


def speculative_generate(
    engine: Engine, prompt: list[int], params: SamplingParams, drafter, k: int = 4, grammar: Grammar | None = None
) -> tuple[Completion, SpeculativeStats]:
    """One completion of `prompt` (token ids) with drafts from `drafter`; greedy or sample. Under a grammar the
    target's distributions are masked by it at every draft position, so drafts it forbids are rejected and
    the output is exactly the constrained output."""
    if k < 1:
        raise UserError("the number of draft tokens per round must be at least 1")
    if grammar is not None and not isinstance(grammar, Grammar):
        raise UserError("speculative decoding takes grammar constraints; the Python-syntax one backtracks "
                        "whole lines, which drafts do not")
    if params.strategy not in ("greedy", "sample") or params.n != 1 or params.repetition_penalty != 1.0:
        raise UserError("speculative decoding supports greedy or sample, n=1, and no repetition penalty")
    if isinstance(drafter, DraftModel):
        draft, target = drafter.engine.model.config, engine.model.config
        if draft.vocab_size != target.vocab_size:
            raise UserError("the draft model must share the target's tokenizer (its vocabulary size differs)")
        if draft.max_seq_len < target.max_seq_len:
            raise UserError(
                f"the draft model's context ({draft.max_seq_len} tokens) is shorter than the target's "
                f"({target.max_seq_len})"
            )
    limit, cut = engine.budget(prompt, params.max_new_tokens)
    max_len = len(prompt) + limit + k + 1
    cache = engine.new_cache(1, max_len)
    if len(prompt) > 1:
        engine.forward(torch.tensor([prompt[:-1]], device=engine.device), cache)
    drafter.start(prompt, max_len)
    generator = torch.Generator(device=engine.device).manual_seed(params.seed)
    stats, tracker = SpeculativeStats(), StopTracker(engine.tok, params.stop)
    context, result = list(prompt), Completion("", [], cut=cut)
    matcher = grammar.matcher() if grammar is not None else None
    while result.finish_reason != "stop" and len(result.token_ids) < limit:
        left = limit - len(result.token_ids)
        drafts, q = drafter.propose(context, min(k, left - 1), params, generator) if left > 1 else ([], None)
        fed = torch.tensor([[context[-1], *drafts]], device=engine.device)
        logits = engine.forward(fed, cache, last_only=False)[0]
        stats.target_forwards += 1
        p = distribution(mask_logits(logits, draft_masks(matcher, drafts), [left - i for i in range(len(drafts) + 1)]),
                         params)
        accepted = verify(drafts, q[: len(drafts)] if q is not None else None, p, generator)
        stats.proposed += len(drafts)
        stats.accepted += len(accepted) - 1
        logprobs = logits.log_softmax(-1)
        for i, token in enumerate(accepted):
            result.token_ids.append(token)
            result.logprobs.append(float(logprobs[i, token]))
            context.append(token)
            if token in engine.tok.stop_ids:
                result.finish_reason = "stop"
                break
            tracker.push(token)
            if matcher is not None:
                matcher.accept(token)
            if tracker.stopped or matcher is not None and matcher.done:
                result.finish_reason = "stop"
                break
            if len(result.token_ids) == limit:
                break
        stats.tokens = len(result.token_ids)
        cache.truncate(len(context) - 1)
        drafter.rollback(len(context) - 1)
    tracker.flush()
    result.text = tracker.text
    return result, stats
