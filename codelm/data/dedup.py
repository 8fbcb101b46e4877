"""Exact and near-duplicate removal on datatrove's MinHash stages, with code shingles.

datatrove's MinHash pipeline is four steps: signatures -> bucket matches ->
clusters -> filter. codelm keeps steps 2 and 4 as they are and replaces

  1. the signature step's shingles: datatrove lowercases, strips punctuation
     and splits words with a natural-language tokenizer (some of which fetch
     models at run time). Code shingles are 5-grams of the `\\w+` tokens,
     case kept. The step also records, per document, its content hash, its
     keep-preference and its whole signature;
  3. the cluster step: exact duplicates (same content hash) are grouped
     first; then candidate pairs from the LSH buckets are verified on the
     whole signature (estimated Jaccard >= threshold, which is what makes
     precision high), clustered with union-find, and one document per
     cluster is kept by a documented preference: most stars, then a known
     license, then first in (repo, path) order.

The removal lists are written in datatrove's `.remove` format, so its
MinhashDedupFilter drops the documents. NearDuplicateIndex is the same
shingles, banding and verification in memory, for a stream of small texts
(mined functions) where datatrove's files would cost more than the work.
"""

import hashlib
import json
import struct
from dataclasses import dataclass
from typing import Literal

import numpy as np
from datatrove.io import get_datafolder
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.dedup.minhash import MinhashConfig, MinhashDedupSignature
from datatrove.utils.binaryio import read_tuples_from_file
from datatrove.utils.hashing import HashConfig
from datatrove.utils.word_tokenizers import WordTokenizer

from codelm.config import knob
from codelm.data.ngrams import WORDS, TokenHasher, ngram_hashes

MERSENNE_61 = np.uint64((1 << 61) - 1)


@dataclass
class DedupConfig:
    exact: bool = knob(True, "drop exact duplicates (by content hash)")
    near: bool = knob(True, "drop near-duplicates (MinHash LSH, verified)")
    level: Literal["file", "repo"] = knob("file", "file, or repo: near-dedup whole repository documents (repo "
                                                  "layout only)")
    ngram: int = knob(5, "words per shingle of the MinHash signatures")
    num_perm: int = knob(256, "permutations = bands x rows; the banding is derived from threshold")
    threshold: float = knob(0.7, "estimated Jaccard at which two documents are near-duplicates")
    seed: int = knob(1, "seeds the MinHash permutations")


def lsh_bands(num_perm: int, threshold: float, recall_at_threshold: float = 0.95) -> tuple[int, int]:
    """(bands, rows), bands * rows <= num_perm: the most rows (fewest spurious candidates) for which a pair
    at exactly `threshold` still shares a bucket with probability >= recall_at_threshold.

    Candidates below the threshold are then removed by the full-signature check (precision).
    """
    best = (num_perm, 1)
    for rows in range(1, num_perm + 1):
        bands = num_perm // rows
        if lsh_probability(threshold, bands, rows) >= recall_at_threshold:
            best = (bands, rows)
    return best


def minhash_config(cfg: DedupConfig) -> MinhashConfig:
    bands, rows = lsh_bands(cfg.num_perm, cfg.threshold)
    return MinhashConfig(n_grams=cfg.ngram, num_buckets=bands, hashes_per_bucket=rows, seed=cfg.seed,
                         hash_config=HashConfig(precision=64, hash_fc="sha1"))


class _CodeWords(WordTokenizer):
    """Satisfies MinhashDedupSignature's constructor without loading a natural-language tokenizer."""

    def word_tokenize(self, text: str) -> list[str]:
        return WORDS.findall(text)

    def sent_tokenize(self, text: str) -> list[str]:
        return [text]

    def span_tokenize(self, text: str) -> list[tuple[int, int]]:
        return [m.span() for m in WORDS.finditer(text)]


def code_shingles(hasher: TokenHasher, text: str, n: int) -> np.ndarray:
    """The text's distinct n-gram hashes of `\\w+` tokens, as a column (one row per shingle)."""
    return np.unique(ngram_hashes(hasher(WORDS.findall(text)), n)).reshape(-1, 1)


def minhash(shingles: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The MinHash signature of a shingle column under the permutations x -> (a x + b) mod (2^61 - 1)."""
    with np.errstate(over="ignore"):
        return np.min((shingles * a + b) % MERSENNE_61, axis=0)


def minhash_parameters(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(a, b) rows of the permutations, drawn as datatrove's MinhashDedupSignature draws them."""
    gen = np.random.RandomState(seed)
    return (gen.randint(1, MERSENNE_61, dtype=np.uint64, size=(1, num_perm)),
            gen.randint(0, MERSENNE_61, dtype=np.uint64, size=(1, num_perm)))


class NearDuplicateIndex:
    """In-memory MinHash LSH over a stream of small texts (mined functions, synthesized solutions): the
    curation's shingles, banding and verification on the whole signature, without datatrove's files."""

    def __init__(self, cfg: DedupConfig):
        self.cfg = cfg
        self.bands, self.rows = lsh_bands(cfg.num_perm, cfg.threshold)
        self.a, self.b = minhash_parameters(self.bands * self.rows, cfg.seed)
        self.hasher = TokenHasher()
        self.buckets: list[dict[bytes, list[int]]] = [{} for _ in range(self.bands)]
        self.signatures: list[np.ndarray] = []

    def add(self, text: str) -> bool:
        """True if the text near-duplicates one added before (and is not kept); else it is kept, False."""
        shingles = code_shingles(self.hasher, text, self.cfg.ngram)
        if len(shingles) == 0:  # shorter than one shingle: nothing to compare
            return False
        sig = minhash(shingles, self.a, self.b)
        keys = [sig[i * self.rows:(i + 1) * self.rows].tobytes() for i in range(self.bands)]
        for bucket, key in zip(self.buckets, keys):
            for other in bucket.get(key, ()):
                if np.mean(self.signatures[other] == sig) >= self.cfg.threshold:
                    return True
        for bucket, key in zip(self.buckets, keys):
            bucket.setdefault(key, []).append(len(self.signatures))
        self.signatures.append(sig)
        return False


def keep_preference(meta: dict) -> tuple:
    """Sort key, smallest kept: most stars, then a known license, then first in (repo, path) order."""
    return (-int(meta.get("stars", -1)), 0 if meta.get("license") else 1, meta.get("repo", ""), meta.get("path", ""))


class CodeMinhashSignature(MinhashDedupSignature):
    """MinHash signatures over code shingles, plus a per-rank side file for the cluster step."""

    name = "🎯 code MinHash signatures"

    def __init__(self, output_folder: str, config: MinhashConfig):
        super().__init__(output_folder, config=config, language=_CodeWords())
        self._hasher = TokenHasher()
        self._docs: list[dict] = []
        self._sigs: dict[int, np.ndarray] = {}

    def get_shingles(self, text: str) -> np.ndarray:
        return code_shingles(self._hasher, text, self.config.n_grams)

    def get_signature(self, shingles: np.ndarray) -> list[list[int]]:
        full = minhash(shingles, *self.parameters)
        self._sigs[len(self._docs) - 1] = full
        return [x.tolist() for x in np.split(full, self.config.num_buckets)]

    def _record(self, data):
        for doc in data:
            self._docs.append({"hash": hashlib.sha256(doc.text.encode()).hexdigest(),
                               "key": keep_preference(doc.metadata)})
            yield doc

    def run(self, data, rank: int = 0, world_size: int = 1):
        self._docs, self._sigs = [], {}
        with np.errstate(over="ignore"):
            super().run(self._record(data), rank, world_size)
        sigs = np.zeros((len(self._docs), self.num_hashes), dtype=np.uint64)
        has_sig = np.zeros(len(self._docs), dtype=bool)
        for idx, sig in self._sigs.items():
            sigs[idx], has_sig[idx] = sig, True
        folder = self.output_folder
        with folder.open(f"docs/{rank:05d}.json", "w") as f:
            json.dump(self._docs, f)
        with folder.open(f"docs/{rank:05d}.sig.npy", "wb") as f:
            np.save(f, sigs)
        with folder.open(f"docs/{rank:05d}.has_sig.npy", "wb") as f:
            np.save(f, has_sig)


class UnionFind:
    def __init__(self):
        self.parent: dict = {}

    def find(self, x):
        root = x
        while self.parent.get(root, root) != root:
            root = self.parent[root]
        while x != root:  # path compression
            self.parent[x], x = root, self.parent[x]
        return root

    def union(self, a, b):
        self.parent.setdefault(a, a)
        self.parent.setdefault(b, b)
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


class DedupClusters(PipelineStep):
    """Exact groups, then verified near-duplicate clusters; writes `.remove` files and clusters.jsonl."""

    type = "🫂 - DEDUP"
    name = "🎯 exact + near clusters"

    def __init__(self, sig_folder: str, dups_folder: str, output_folder: str, config: DedupConfig):
        super().__init__()
        self.sig_folder = get_datafolder(sig_folder)
        self.dups_folder = get_datafolder(dups_folder)
        self.output_folder = get_datafolder(output_folder)
        self.config = config

    def _load(self):
        docs, sigs, has_sig = {}, {}, {}
        for name in self.sig_folder.list_files(subdirectory="docs", glob_pattern="*.json"):
            rank = int(name.rsplit("/", 1)[-1].split(".")[0])
            with self.sig_folder.open(name) as f:
                docs[rank] = json.load(f)
            with self.sig_folder.open(name.replace(".json", ".sig.npy"), "rb") as f:
                sigs[rank] = np.load(f)
            with self.sig_folder.open(name.replace(".json", ".has_sig.npy"), "rb") as f:
                has_sig[rank] = np.load(f)
        return docs, sigs, has_sig

    def candidate_pairs(self):
        for name in sorted(self.dups_folder.list_files(glob_pattern="*.dups")):
            with self.dups_folder.open(name, "rb") as f:
                for f1, d1, f2, d2 in read_tuples_from_file(f, "4I", lines_to_buffer=1000):
                    yield (f1, d1), (f2, d2)

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        assert world_size == 1, "the cluster step runs as one task"
        docs, sigs, has_sig = self._load()
        key = {(r, i): tuple(d["key"]) + (r, i) for r, rows in docs.items() for i, d in enumerate(rows)}
        remove: set[tuple] = set()
        clusters: list[dict] = []

        # Exact: one survivor per content hash
        representative: dict[tuple, tuple] = {}
        if self.config.exact:
            by_hash: dict[str, list] = {}
            for r, rows in docs.items():
                for i, d in enumerate(rows):
                    by_hash.setdefault(d["hash"], []).append((r, i))
            for members in by_hash.values():
                members.sort(key=key.get)
                for m in members:
                    representative[m] = members[0]
                for m in members[1:]:
                    remove.add(m)
                    self.stat_update("exact_duplicate")

        # Near: verify LSH candidates on the whole signature, cluster, keep the preferred member
        if self.config.near:
            uf = UnionFind()
            for a, b in self.candidate_pairs():
                self.stat_update("candidate_pairs")
                a, b = representative.get(a, a), representative.get(b, b)
                if a == b or not (has_sig[a[0]][a[1]] and has_sig[b[0]][b[1]]):
                    continue
                similarity = float(np.mean(sigs[a[0]][a[1]] == sigs[b[0]][b[1]]))
                if similarity >= self.config.threshold:
                    self.stat_update("verified_pairs")
                    uf.union(a, b)
            groups: dict[tuple, list] = {}
            for node in list(uf.parent):
                groups.setdefault(uf.find(node), []).append(node)
            for members in groups.values():
                members = sorted(set(members), key=key.get)
                keep = members[0]
                for m in members[1:]:
                    remove.add(m)
                    self.stat_update("near_duplicate")
                clusters.append({"kept": self._name(docs, keep), "removed": [self._name(docs, m) for m in members[1:]]})

        with self.output_folder.get_output_file_manager(mode="wb") as out:
            for r in sorted(docs):
                indices = sorted(i for (rr, i) in remove if rr == r)
                out.write(f"{r:06d}.remove", b"".join(struct.pack("<I", i) for i in indices))
        with self.output_folder.open("clusters.jsonl", "w") as f:
            for c in sorted(clusters, key=lambda c: c["kept"]):
                f.write(json.dumps(c) + "\n")

    @staticmethod
    def _name(docs, node) -> str:
        repo, path = docs[node[0]][node[1]]["key"][2:4]
        return f"{repo}/{path}"


def lsh_probability(similarity: float, bands: int, rows: int) -> float:
    """Chance that two documents of this Jaccard similarity share at least one LSH bucket."""
    return 1 - (1 - similarity**rows) ** bands


def describe_lsh(cfg: DedupConfig) -> str:
    bands, rows = lsh_bands(cfg.num_perm, cfg.threshold)
    return (f"{bands} bands x {rows} rows ({bands * rows} permutations), {cfg.ngram}-gram word shingles; "
            f"P(candidate | J={cfg.threshold}) = {lsh_probability(cfg.threshold, bands, rows):.3f}, "
            f"LSH threshold {(1 / bands) ** (1 / rows):.2f}; pairs verified at estimated J >= {cfg.threshold}")
