"""Decoding settings and the logits processors built from them.

A processor maps float logits (B, V) to float logits (B, V); removed tokens
get -inf. They compose in a fixed order, the one Hugging Face and vLLM use:
repetition penalty, temperature, then the truncations (top-k, top-p, min-p),
each of which always keeps the most likely token.
"""

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from codelm.errors import UserError

Processor = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class SamplingParams:
    """How tokens are chosen; the defaults here are the only ones (the CLI and the evaluator pass what they are given).

    Greedy is `strategy="greedy"` and nothing else: temperature, top-k, top-p and min-p apply to
    strategy "sample" only. `from_temperature` reads the other common spelling, temperature 0 for greedy.
    Generation stops at max_new_tokens or when the model's context is full, whichever comes first."""

    strategy: str = "greedy"  # greedy | sample | beam
    max_new_tokens: int = 256
    temperature: float = 1.0
    top_k: int = 0  # 0: off
    top_p: float = 0.95  # 1: off; 0.95 is the usual nucleus for code (Codex pass@k)
    min_p: float = 0.0  # 0: off
    repetition_penalty: float = 1.0  # 1: off (CTRL-style: divide positive logits, multiply negative)
    num_beams: int = 4
    length_penalty: float = 1.0  # beam score = sum of log-probs / generated_length ** length_penalty
    early_stopping: bool = True  # beam: stop once num_beams hypotheses have finished
    stop: list[str] = field(default_factory=list)  # stop strings, matched on decoded text
    n: int = 1  # completions per prompt (beam: the best n beams)
    seed: int = 0  # sample j of a request draws from its own generator seeded (seed, j)

    def __post_init__(self):
        checks = [
            (self.strategy in ("greedy", "sample", "beam"), f"strategy must be greedy, sample or beam, got {self.strategy!r}"),
            (self.max_new_tokens >= 1, "max_new_tokens must be at least 1"),
            (self.temperature > 0, "temperature must be > 0 (use strategy greedy for temperature 0)"),
            (self.top_k >= 0, "top_k must be >= 0"),
            (0 < self.top_p <= 1, "top_p must be in (0, 1]"),
            (0 <= self.min_p < 1, "min_p must be in [0, 1)"),
            (self.repetition_penalty > 0, "repetition_penalty must be > 0"),
            (self.num_beams >= 1, "num_beams must be >= 1"),
            (self.n >= 1, "n must be >= 1"),
            (self.strategy != "beam" or self.n <= self.num_beams, "n must be <= num_beams for beam search"),
            (self.strategy != "greedy" or self.n == 1, "greedy decoding gives one completion: use n=1 or strategy sample"),
            (all(self.stop), "stop strings must be non-empty"),
        ]
        for ok, message in checks:
            if not ok:
                raise UserError(message)

    @classmethod
    def from_temperature(cls, temperature: float, **settings) -> "SamplingParams":
        """The OpenAI / vLLM spelling that `codelm eval --temperature` uses: 0 is greedy, anything else samples."""
        if temperature == 0:
            return cls(strategy="greedy", **settings)
        return cls(strategy="sample", temperature=temperature, **settings)


def repetition_penalty(penalty: float, history: torch.Tensor, history_mask: torch.Tensor) -> Processor:
    """Penalize every token already present in a row's history (B, L); masked slots are ignored."""

    def apply(logits):
        seen = torch.zeros_like(logits, dtype=torch.bool)
        seen.scatter_(1, history, history_mask)
        penalized = torch.where(logits > 0, logits / penalty, logits * penalty)
        return torch.where(seen, penalized, logits)

    return apply


def temperature(t: float) -> Processor:
    return lambda logits: logits / t


def top_k(k: int) -> Processor:
    def apply(logits):
        kth = torch.topk(logits, min(k, logits.shape[-1]), dim=-1).values[:, -1:]
        return logits.masked_fill(logits < kth, float("-inf"))

    return apply


def top_p(p: float) -> Processor:
    """Keep the smallest set of most likely tokens whose probability reaches p."""

    def apply(logits):
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        mass_before = probs.cumsum(-1) - probs  # probability of the tokens ranked above each one
        drop_sorted = mass_before >= p
        drop = torch.zeros_like(drop_sorted).scatter_(1, order, drop_sorted)
        return logits.masked_fill(drop, float("-inf"))

    return apply


def min_p(p: float) -> Processor:
    """Keep tokens whose probability is at least p times the top token's."""

    def apply(logits):
        probs = logits.softmax(-1)
        return logits.masked_fill(probs < p * probs.max(-1, keepdim=True).values, float("-inf"))

    return apply


def processors(params: SamplingParams, history: torch.Tensor | None = None,
               history_mask: torch.Tensor | None = None) -> list[Processor]:
    """The processors `params` asks for, in application order (history: token ids so far, for the penalty)."""
    chain: list[Processor] = []
    if params.repetition_penalty != 1.0 and history is not None:
        chain.append(repetition_penalty(params.repetition_penalty, history, history_mask))
    if params.strategy == "sample":
        if params.temperature != 1.0:
            chain.append(temperature(params.temperature))
        if params.top_k:
            chain.append(top_k(params.top_k))
        if params.top_p < 1.0:
            chain.append(top_p(params.top_p))
        if params.min_p > 0.0:
            chain.append(min_p(params.min_p))
    return chain


def apply_processors(logits: torch.Tensor, chain: list[Processor]) -> torch.Tensor:
    for processor in chain:
        logits = processor(logits)
    return logits


def sample_rows(probs: torch.Tensor, generators: list[torch.Generator]) -> torch.Tensor:
    """One token per row, row i drawn with generators[i] (so a request's samples do not depend on its batch)."""
    return torch.cat([torch.multinomial(row, 1, generator=g) for row, g in zip(probs, generators)])
