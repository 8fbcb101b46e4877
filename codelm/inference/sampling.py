"""The logits processors built from decoding settings (codelm.config.SamplingParams).

A processor maps float logits (B, V) to float logits (B, V); removed tokens
get -inf. They compose in a fixed order, the one Hugging Face and vLLM use:
repetition penalty, temperature, then the truncations (top-k, top-p, min-p),
each of which always keeps the most likely token.
"""

from collections.abc import Callable

import torch

from codelm.config import SamplingParams

Processor = Callable[[torch.Tensor], torch.Tensor]


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
