"""The corpus stages: train a tokenizer on the training split, and tokenize a corpus into shards.

A corpus is either a curated directory (`codelm curate` output: Parquet
shards, sources and their mix) or raw files and directories, read as they are
(no filters: that is curation's job). `tokenize_corpus` writes

    OUT/train/  OUT/val/   token shards (shards.py); train follows the source mix
    OUT/tokenizer.json     a copy, so the directory is all that training needs
    OUT/stats.json         documents, bytes, tokens per split; the mix realized in tokens

into a temporary directory that replaces OUT only when complete. The split is
a hash of each document's path, so it is stable across runs and corpus growth.
"""

import json
import shutil
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from itertools import islice
from pathlib import Path

import pyarrow.parquet as pq
from tqdm import tqdm

from codelm.config import DEFAULT_VAL_FRACTION, ModelConfig, field_default
from codelm.data.card import load_stats
from codelm.data.mix import mix_order, plan_epochs
from codelm.data.shards import ShardWriter, TokenShards
from codelm.data.sources import CodeTreeReader, is_validation, stdlib_root
from codelm.errors import UserError
from codelm.io import atomic_directory, atomic_write_json
from codelm.tokenizer import Tokenizer, train_tokenizer


@dataclass
class CorpusDoc:
    key: str  # what the train/validation split hashes
    source: str
    text: str
    specials: list  # [start, end] character spans that are special tokens (repository documents)


@dataclass
class Corpus:
    """Documents plus what the mix needs: source weights and epoch caps (raw files: one source)."""

    paths: list[str] | None
    skipped: Counter = field(default_factory=Counter)  # raw files only: unusable files by reason

    def __post_init__(self):
        for path in self.paths or []:  # checked here, before any work, so a typo fails at once
            if not Path(path).exists():
                raise UserError(f"corpus path not found: {path}")

    @property
    def curated(self) -> Path | None:
        if self.paths and len(self.paths) == 1 and (Path(self.paths[0]) / "stats.json").is_file():
            return Path(self.paths[0])
        return None

    def describe(self) -> list[str]:
        return [str(p) for p in self.paths] if self.paths else ["stdlib"]

    def mix(self) -> tuple[dict[str, float], dict[str, float], int, int]:
        """(weights, max_epochs, token budget, seed)."""
        if self.curated is None:
            return {"data": 1.0}, {"data": 1.0}, 0, 0
        cfg = load_stats(self.curated)["config"]
        sources = cfg["sources"]
        return ({s["name"]: s["weight"] for s in sources}, {s["name"]: s["max_epochs"] for s in sources},
                cfg["mix"]["tokens"], cfg["mix"]["seed"])

    def documents(self) -> Iterator[CorpusDoc]:
        if self.curated is not None:
            yield from self._curated_documents(self.curated)
            return
        for root in self.paths or [str(stdlib_root())]:
            reader = CodeTreeReader(root, source="data", only_python=not self.paths)
            for doc in reader():
                yield CorpusDoc(doc.metadata["path"], "data", doc.text, [])
            self.skipped.update(reader.skipped())

    @staticmethod
    def _curated_documents(directory: Path) -> Iterator[CorpusDoc]:
        files = sorted((directory / "data").glob("**/*.parquet"))
        if not files:
            raise UserError(f"curated corpus {directory} has no shards under data/")
        for path in files:
            table = pq.read_table(path, columns=["text", "metadata"])
            for text, meta in zip(table.column("text").to_pylist(), table.column("metadata").to_pylist()):
                specials = json.loads(meta.get("specials") or "[]")
                yield CorpusDoc(f"{meta['repo']}/{meta['path']}", meta["source"], text, specials)


def encode_document(tok: Tokenizer, doc: CorpusDoc) -> list[int]:
    """Text as plain text, except the spans the curator marked as special tokens."""
    ids, pos = [], 0
    for start, end in doc.specials:
        ids += tok.encode(doc.text[pos:start]) if start > pos else []
        ids.append(tok.special[doc.text[start:end]])
        pos = end
    return ids + tok.encode(doc.text[pos:])


def train_tokenizer_on_corpus(
    paths: list[str] | None,
    out: str | Path,
    vocab_size: int = field_default(ModelConfig, "vocab_size"),
    val_fraction: float = DEFAULT_VAL_FRACTION,
) -> tuple[Tokenizer, int]:
    """Train BPE on the training split only, so validation text stays unseen; returns (tokenizer, documents)."""
    count = 0
    corpus = Corpus(paths)

    def texts():
        nonlocal count
        for d in tqdm(corpus.documents(), desc="tokenizer: reading", unit=" docs"):
            if not is_validation(d.key, val_fraction):
                count += 1
                yield d.text

    tok = train_tokenizer(texts(), vocab_size=vocab_size)
    if count == 0:
        raise UserError(f"no usable documents in {paths or 'the stdlib'}")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tok.save(out)
    return tok, count


def _batched(iterable, n):
    it = iter(iterable)
    while chunk := list(islice(it, n)):
        yield chunk


@dataclass
class SplitStats:
    docs: int = 0
    bytes: int = 0
    tokens: int = 0  # train: after mixing, what training will see


@dataclass
class SourceShare:
    """One source's part of the training split: the configured weight and what the mix realized."""

    weight: float
    max_epochs: float
    source_tokens: int
    epochs: float
    tokens: int
    share: float
    target_share: float


@dataclass
class TokenizedStats:
    """OUT/stats.json of `codelm tokenize`: what the report and later stages read about the token shards."""

    sources: list[str]
    val_fraction: float
    skipped: dict[str, int]
    splits: dict[str, SplitStats]
    mix: dict[str, SourceShare]

    @classmethod
    def load(cls, tokens_dir: str | Path) -> "TokenizedStats":
        path = Path(tokens_dir) / "stats.json"
        if not path.is_file():
            raise UserError(f"{tokens_dir} is not a `codelm tokenize` output (no stats.json)")
        d = json.loads(path.read_text())
        return cls(
            d["sources"],
            d["val_fraction"],
            d["skipped"],
            {k: SplitStats(**v) for k, v in d["splits"].items()},
            {k: SourceShare(**v) for k, v in d["mix"].items()},
        )


def tokenize_corpus(
    paths: list[str] | None, tokenizer_path: str | Path, out_dir: str | Path, val_fraction: float = DEFAULT_VAL_FRACTION
) -> TokenizedStats:
    tok = Tokenizer.load(tokenizer_path)
    corpus = Corpus(paths)
    with atomic_directory(out_dir) as tmp:
        return _write_splits(tok, corpus, tokenizer_path, tmp, val_fraction)


def _write_splits(tok: Tokenizer, corpus: Corpus, tokenizer_path, tmp: Path, val_fraction: float) -> TokenizedStats:
    weights, max_epochs, budget, seed = corpus.mix()
    val = ShardWriter(tmp / "val", tok.vocab_size)
    by_source = {name: ShardWriter(tmp / "sources" / name, tok.vocab_size) for name in weights}
    doc_tokens: dict[str, list[int]] = {name: [] for name in weights}
    split_stats = {split: SplitStats() for split in ("train", "val")}
    for chunk in _batched(tqdm(corpus.documents(), desc="tokenize", unit=" docs"), 64):
        plain = iter(tok.encode_batch([d.text for d in chunk if not d.specials]))
        for doc in chunk:
            ids = encode_document(tok, doc) if doc.specials else next(plain)
            split = "val" if is_validation(doc.key, val_fraction) else "train"
            if split == "val":
                val.add(ids)
            else:
                by_source[doc.source].add(ids)
                doc_tokens[doc.source].append(len(ids))
            s = split_stats[split]
            s.docs += 1
            s.bytes += len(doc.text.encode())
            s.tokens += len(ids)
    for split, s in split_stats.items():
        if s.docs == 0:
            raise UserError(f"the {split} split is empty: {corpus.describe()} has too few usable documents")
    val.close({"split": "val"})
    for writer in by_source.values():
        writer.close({"split": "source"})

    tokens = {name: sum(t) for name, t in doc_tokens.items()}
    epochs = plan_epochs(tokens, weights, max_epochs, budget)
    train = ShardWriter(tmp / "train", tok.vocab_size)
    source_shards = {name: TokenShards(tmp / "sources" / name) for name in weights}
    realized = {name: 0 for name in weights}
    for name, i in mix_order(doc_tokens, epochs, seed):
        ids = source_shards[name][i]
        train.add(ids)
        realized[name] += len(ids)
    train.close({"split": "train"})
    shutil.rmtree(tmp / "sources")
    total = sum(realized.values())
    mix = {
        name: SourceShare(
            weight=weights[name],
            max_epochs=max_epochs[name],
            source_tokens=tokens[name],
            epochs=round(epochs[name], 4),
            tokens=realized[name],
            share=round(realized[name] / total, 4),
            target_share=round(weights[name] / sum(weights.values()), 4),
        )
        for name in weights
    }
    split_stats["train"].tokens = total  # after mixing: what training will see
    shutil.copyfile(tokenizer_path, tmp / "tokenizer.json")
    result = TokenizedStats(
        sources=corpus.describe(),
        val_fraction=val_fraction,
        skipped=dict(sorted(corpus.skipped.items())),
        splits=split_stats,
        mix=mix,
    )
    atomic_write_json(tmp / "stats.json", asdict(result))
    return result
