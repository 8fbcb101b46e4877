"""Fill-in-the-middle (Bavarian et al. 2022, "Efficient Training of Language Models to Fill in the Middle").

A document is cut at two points drawn uniformly over its characters into
prefix, middle and suffix, and reordered so the middle comes last:

    PSM: <fim_prefix> prefix <fim_suffix> suffix <fim_middle> middle
    SPM: <fim_prefix> <fim_suffix> suffix <fim_middle> prefix middle   (the paper's SPM variant 2)

Each piece is tokenized on its own, as it will be at inference. The transform
works on one document, so it never spans two; the loader adds the
<|endoftext|> that follows, which teaches the model where a middle ends.
"""

import numpy as np

from codelm.tokenizer import FIM_MIDDLE, FIM_PREFIX, FIM_SUFFIX, Tokenizer


def fim_transform(ids, tok: Tokenizer, rng: np.random.Generator, spm_rate: float) -> list[int]:
    """Token ids of one document -> its FIM ordering (PSM, or SPM with probability spm_rate)."""
    text = tok.decode(ids)
    cut_a, cut_b = sorted(int(c) for c in rng.integers(0, len(text) + 1, size=2))
    prefix, middle, suffix = tok.encode_batch([text[:cut_a], text[cut_a:cut_b], text[cut_b:]])
    pre, suf, mid = tok.require(FIM_PREFIX, FIM_SUFFIX, FIM_MIDDLE)
    if rng.random() < spm_rate:
        return [pre, suf, *suffix, mid, *prefix, *middle]
    return [pre, *prefix, suf, *suffix, mid, *middle]


def fim_prompt(prefix: str, suffix: str, tok: Tokenizer) -> list[int]:
    """The PSM prompt for completing the middle between prefix and suffix."""
    pre, suf, mid = tok.require(FIM_PREFIX, FIM_SUFFIX, FIM_MIDDLE)
    return [*tok.prefix_ids, pre, *tok.encode(prefix), suf, *tok.encode(suffix), mid]


def fim_untransform(ids, tok: Tokenizer) -> str:
    """Inverse of fim_transform: the original document text from a PSM or SPM sequence."""
    ids = list(ids)
    pre, suf, mid = tok.require(FIM_PREFIX, FIM_SUFFIX, FIM_MIDDLE)
    if ids[:1] != [pre] or ids.count(suf) != 1 or ids.count(mid) != 1:
        raise ValueError("not a FIM sequence: expected one <fim_prefix>, <fim_suffix> and <fim_middle>")
    i_suf, i_mid = ids.index(suf), ids.index(mid)
    if i_suf == 1:  # SPM: the tail is prefix + middle
        return tok.decode(ids[i_mid + 1 :]) + tok.decode(ids[2:i_mid])
    return tok.decode(ids[1:i_suf]) + tok.decode(ids[i_mid + 1 :]) + tok.decode(ids[i_suf + 1 : i_mid])
