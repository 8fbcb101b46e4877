"""Data mixes: several sources drawn with target proportions and epoch caps, in tokens.

The shape of Code Llama's data table: each source has a sampling weight (its
share of the training tokens) and a cap on how many passes over it are
allowed. The largest total that respects every cap is used (or a smaller
token budget), each source gets weight x total tokens, which is some whole
epochs plus a seeded random subset of documents, and the result is shuffled
with the same seed. The realized token shares are reported, because whole
documents make them differ slightly from the targets.
"""

import numpy as np

from codelm.errors import UserError


def plan_epochs(tokens: dict[str, int], weights: dict[str, float], max_epochs: dict[str, float],
                budget: int = 0) -> dict[str, float]:
    """Epochs per source such that tokens are split by weight and no source exceeds its cap."""
    empty = [s for s, n in tokens.items() if n == 0]
    if empty:
        raise UserError(f"mix source(s) {empty} have no training tokens left after curation")
    total_weight = sum(weights.values())
    share = {s: w / total_weight for s, w in weights.items()}
    feasible = min(max_epochs[s] * tokens[s] / share[s] for s in tokens)
    total = min(budget, feasible) if budget else feasible
    return {s: share[s] * total / tokens[s] for s in tokens}


def sample_documents(doc_tokens: list[int], epochs: float, rng: np.random.Generator) -> list[int]:
    """Document indices: every document for each whole epoch, then a random subset for the fraction."""
    n = len(doc_tokens)
    whole = int(epochs + 1e-9)
    chosen = [i for _ in range(whole) for i in range(n)]
    target = (epochs - whole) * sum(doc_tokens)
    taken = 0
    for i in rng.permutation(n).tolist():
        if taken >= target:
            break
        chosen.append(i)
        taken += doc_tokens[i]
    return chosen


def mix_order(doc_tokens: dict[str, list[int]], epochs: dict[str, float], seed: int) -> list[tuple[str, int]]:
    """The shuffled (source, document) sequence of the training split."""
    rng = np.random.default_rng(seed)
    entries = [(s, i) for s in sorted(doc_tokens) for i in sample_documents(doc_tokens[s], epochs[s], rng)]
    return [entries[j] for j in rng.permutation(len(entries)).tolist()]
