"""Code tokens and hashed n-grams, shared by near-dedup (shingles) and decontamination.

Hashing is vectorised: tokens are hashed once, and each n-gram's hash is a
fixed mix of its n token hashes computed over whole numpy arrays, so a file of
100k tokens costs a few array passes, not 100k Python tuples.
"""

import hashlib
import re

import numpy as np

WORDS = re.compile(r"\w+")  # shingles for near-dedup: split on non-word characters
CODE_TOKENS = re.compile(r"\w+|[^\w\s]")  # decontamination: words and single punctuation marks

_MIX = np.array([0x9E3779B97F4A7C15 * (2 * j + 1) % 2**64 for j in range(64)], dtype=np.uint64)


def token_hash(token: str) -> int:
    """A 64-bit hash that is the same in every process (Python's hash() is salted per process)."""
    return int.from_bytes(hashlib.blake2b(token.encode(), digest_size=8).digest(), "little")


class TokenHasher:
    """Memoised token hashes: code reuses a small vocabulary, so blake2b runs once per distinct token."""

    def __init__(self):
        self.cache: dict[str, int] = {}

    def __call__(self, tokens: list[str]) -> np.ndarray:
        cache = self.cache
        out = np.empty(len(tokens), dtype=np.uint64)
        for i, tok in enumerate(tokens):
            h = cache.get(tok)
            if h is None:
                h = cache[tok] = token_hash(tok)
            out[i] = h
        return out


def ngram_hashes(token_hashes: np.ndarray, n: int) -> np.ndarray:
    """Hashes of every window of n consecutive tokens (empty when there are fewer than n)."""
    count = len(token_hashes) - n + 1
    if count <= 0:
        return np.empty(0, dtype=np.uint64)
    acc = np.zeros(count, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for j in range(n):
            acc ^= token_hashes[j:j + count] * _MIX[j]
            acc = (acc << np.uint64(13)) | (acc >> np.uint64(51))
    return acc
