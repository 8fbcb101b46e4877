"""Bits per byte beside what compressors and a unigram model get on the same text, per language.

The measurement itself (held-out loss and bits per byte over token batches) is
codelm.train.validation, shared with training's periodic validation.
"""

import contextlib
import gzip
import lzma
from dataclasses import asdict, dataclass

import numpy as np

from codelm.data.corpus import Corpus
from codelm.data.languages import language_of
from codelm.errors import UserError
from codelm.model.llama import Transformer
from codelm.tokenizer import Tokenizer
from codelm.train.validation import held_out_loader, held_out_loss, token_bytes_tensor


@dataclass
class Compression:
    gzip: float  # bits per byte, gzip -9
    xz: float  # bits per byte, xz -9e
    bytes: int


def compression_bpb(texts: list[str]) -> Compression:
    """Bits per byte of gzip -9 and xz -9e on the concatenated texts: what a model must beat to have learned
    more than a general-purpose compressor finds in the same validation text."""
    raw = "".join(texts).encode()
    return Compression(gzip=8 * len(gzip.compress(raw, compresslevel=9, mtime=0)) / len(raw),
                       xz=8 * len(lzma.compress(raw, preset=9 | lzma.PRESET_EXTREME)) / len(raw), bytes=len(raw))


def unigram_entropy(docs, vocab_size: int, eot_id: int) -> float:
    """Entropy in nats of the corpus's unigram token distribution: the loss of a model that ignores context."""
    counts = np.zeros(vocab_size, dtype=np.int64)
    for ids in docs:
        counts += np.bincount(np.asarray(ids, dtype=np.int64), minlength=vocab_size)
    counts[eot_id] += len(docs)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


@dataclass
class LanguageBpb:
    loss: float
    bpb: float
    tokens: int
    bytes: int
    documents: int


@dataclass
class BpbScore:
    """`codelm eval --tasks bpb`: bits per byte over all files and per language."""
    overall: LanguageBpb
    languages: dict[str, LanguageBpb]
    skipped: dict[str, int]
    seconds: float = 0.0

    @classmethod
    def from_json(cls, d: dict) -> "BpbScore":
        return cls(**{**d, "overall": LanguageBpb(**d["overall"]),
                      "languages": {k: LanguageBpb(**v) for k, v in d["languages"].items()}})

    def summary(self) -> str:
        return f"bpb: {self.overall.bpb:.4f} over {self.overall.documents} files"


def evaluate_languages(model: Transformer, tok: Tokenizer, paths: list[str], seq_len: int = 0,
                       batch_rows: int = 16) -> BpbScore:
    """Bits per byte of the code files under paths, overall and per language (from each file's name).

    Runs in the model's own weight dtype: the caller chose it (measured or asked for)."""
    corpus = Corpus(paths)
    groups: dict[str, list[np.ndarray]] = {}
    for d in corpus.documents():
        language = language_of(d.key, d.text[:200].split("\n", 1)[0]) or "other"
        groups.setdefault(language, []).append(np.asarray(tok.encode(d.text), dtype=np.int64))
    if not groups:
        raise UserError(f"no usable code files in {paths} (skipped: {dict(corpus.skipped)})")
    seq_len = seq_len or model.config.max_seq_len
    device = next(model.parameters()).device
    autocast = contextlib.nullcontext()  # the weights' own dtype, as the engine chose it (--dtype)
    languages = {name: LanguageBpb(**asdict(held_out_loss(model, held_out_loader(docs, tok, seq_len, batch_rows),
                                                          token_bytes_tensor(tok), autocast, device)),
                                   documents=len(docs))
                 for name, docs in sorted(groups.items(), key=lambda kv: -len(kv[1]))}
    scores = languages.values()
    tokens, n_bytes = sum(r.tokens for r in scores), sum(r.bytes for r in scores)
    # bpb and loss are ratios: the overall values weight each language by its bytes and tokens
    overall = LanguageBpb(loss=sum(r.loss * r.tokens for r in scores) / max(tokens, 1),
                          bpb=sum(r.bpb * r.bytes for r in scores) / max(n_bytes, 1), tokens=tokens, bytes=n_bytes,
                          documents=sum(r.documents for r in scores))
    return BpbScore(overall=overall, languages=languages, skipped=dict(corpus.skipped))
