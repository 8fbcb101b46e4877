"""Contamination report: how much of each benchmark item a training corpus already contains.

For every item (a HumanEval problem: prompt + canonical solution) the report
gives the longest stretch of its code tokens (words and punctuation, as in
decontamination) that occurs verbatim, in order, in one corpus document, and
the share of its n-grams found anywhere in the corpus. An item is flagged when
the longest overlap covers at least `threshold` of its tokens.

The corpus's n-grams are indexed once (hash -> document, position). A match
grows along consecutive item n-grams only while they continue at the next
position of the same document, so a reported overlap is a real contiguous copy,
not a chain of common n-grams from different files. N-grams seen more than
MAX_OCCURRENCES times (boilerplate) keep only their first occurrences.
"""

import re
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from codelm.data.corpus import Corpus
from codelm.data.ngrams import CODE_TOKENS, TokenHasher, ngram_hashes
from codelm.tasks.humaneval import load_problems

MAX_OCCURRENCES = 64


@dataclass
class Overlap:
    item: str
    tokens: int  # code tokens in the item
    longest: int  # tokens in the longest contiguous copy found in one document (0: none of n or more tokens)
    longest_fraction: float
    ngram_fraction: float  # share of the item's n-grams present anywhere in the corpus
    document: str  # where the longest copy is
    excerpt: str  # its text, from the item
    flagged: bool


class CorpusIndex:
    """Every n-gram of the corpus as sorted arrays: hash, document, token position."""

    def __init__(self, documents: list[tuple[str, str]], n: int):
        self.n, self.names, self.hasher = n, [name for name, _ in documents], TokenHasher()
        hashes, docs, positions = [], [], []
        for doc_id, (_, text) in enumerate(tqdm(documents, desc="contamination: indexing", unit=" docs")):
            grams = ngram_hashes(self.hasher(CODE_TOKENS.findall(text)), n)
            hashes.append(grams)
            docs.append(np.full(len(grams), doc_id, dtype=np.int32))
            positions.append(np.arange(len(grams), dtype=np.int32))
        hashes = np.concatenate(hashes) if hashes else np.empty(0, dtype=np.uint64)
        order = np.argsort(hashes, kind="stable")
        self.hashes = hashes[order]
        self.docs = np.concatenate(docs)[order] if docs else np.empty(0, dtype=np.int32)
        self.positions = np.concatenate(positions)[order] if positions else np.empty(0, dtype=np.int32)

    def occurrences(self, gram: int) -> set[tuple[int, int]]:
        lo = np.searchsorted(self.hashes, np.uint64(gram), "left")
        hi = min(np.searchsorted(self.hashes, np.uint64(gram), "right"), lo + MAX_OCCURRENCES)
        return set(zip(self.docs[lo:hi].tolist(), self.positions[lo:hi].tolist()))

    def overlap(self, item: str, text: str, threshold: float) -> Overlap:
        spans = [m.span() for m in CODE_TOKENS.finditer(text)]
        grams = ngram_hashes(self.hasher([text[a:b] for a, b in spans]), self.n)
        best, best_end, best_doc, present = 0, -1, -1, 0
        runs: dict[tuple[int, int], int] = {}  # (doc, position of this n-gram there) -> n-grams matched so far
        for i, gram in enumerate(grams.tolist()):
            found = self.occurrences(gram)
            present += bool(found)
            runs = {(d, p): runs.get((d, p - 1), 0) + 1 for d, p in found}
            for (d, _), length in runs.items():
                if length > best:
                    best, best_end, best_doc = length, i, d
        longest = best + self.n - 1 if best else 0
        excerpt = text[spans[best_end - best + 1][0]:spans[best_end + self.n - 1][1]] if best else ""
        fraction = longest / len(spans) if spans else 0.0
        return Overlap(item, len(spans), longest, round(fraction, 4), round(present / max(len(grams), 1), 4),
                       self.names[best_doc] if best else "", excerpt[:500], fraction >= threshold)


def humaneval_texts() -> list[tuple[str, str]]:
    return [(p["task_id"], p["prompt"] + p["canonical_solution"]) for p in load_problems()]


@dataclass
class ContaminationReport:
    corpus: list[str]
    documents: int
    ngram: int
    threshold: float
    flagged: int
    items: list[Overlap]  # largest overlap first
    seconds: float = 0.0

    @classmethod
    def from_json(cls, d: dict) -> "ContaminationReport":
        return cls(**{**d, "items": [Overlap(**o) for o in d["items"]]})

    def summary(self) -> str:
        return f"contamination: {self.flagged} of {len(self.items)} items flagged"


def contamination_report(corpus: list[str], items: list[tuple[str, str]] | None = None, n: int = 10,
                         threshold: float = 0.5) -> ContaminationReport:
    """Overlap of each benchmark item (default: HumanEval) with the documents of a corpus (`codelm curate` output
    or files/directories of code)."""
    documents = [(d.key, d.text) for d in Corpus(corpus).documents()]
    index = CorpusIndex(documents, n)
    overlaps = [index.overlap(name, text, threshold) for name, text in items or humaneval_texts()]
    return ContaminationReport(corpus=corpus, documents=len(documents), ngram=n, threshold=threshold,
                               flagged=sum(o.flagged for o in overlaps),
                               items=sorted(overlaps, key=lambda o: -o.longest_fraction))


def excerpt_line(text: str, width: int = 60) -> str:
    """An excerpt on one table line."""
    flat = re.sub(r"\s+", " ", text).strip()
    return flat if len(flat) <= width else flat[:width - 1] + "…"
