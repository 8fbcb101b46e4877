"""Validation loss and bits-per-byte.

Loss per token depends on the tokenizer; bits per byte does not, so it is how
runs with different tokenizers (or none) are compared:

    bpb = sum of next-token losses in nats / (ln 2 * UTF-8 bytes of those tokens)

Special tokens (<|endoftext|>, FIM sentinels) have no bytes and are left out
of both sums, as in nanochat. The loss is the plain mean over all targets.
"""

import contextlib
import gzip
import lzma
import math
from collections.abc import Iterable

import numpy as np
import torch
import torch.nn.functional as F

from codelm.data.loader import IGNORE, Batch, PackedLoader
from codelm.errors import UserError
from codelm.model.llama import Transformer
from codelm.tokenizer import Tokenizer


@torch.no_grad()
def evaluate(model: Transformer, batches: Iterable[Batch], token_bytes: torch.Tensor, autocast, device) -> dict:
    """Mean loss (nats/token), bits per byte and counts over a finite stream of batches."""
    was_training = model.training
    model.eval()
    nats = torch.zeros((), dtype=torch.float64)
    text_nats = torch.zeros((), dtype=torch.float64)
    n_tokens = 0
    n_bytes = 0
    token_bytes = token_bytes.to(device)
    for batch in batches:
        batch = batch.to(device)
        with autocast:
            logits = model(batch.inputs, batch.doc_ids)
        losses = F.cross_entropy(
            logits.float().view(-1, logits.shape[-1]), batch.targets.view(-1), ignore_index=IGNORE, reduction="none"
        )
        valid = batch.targets.view(-1) != IGNORE
        nbytes = token_bytes[batch.targets.view(-1).clamp(min=0)] * valid
        nats += losses.sum().double().cpu()
        text_nats += (losses * (nbytes > 0)).sum().double().cpu()
        n_tokens += int(valid.sum())
        n_bytes += int(nbytes.sum())
    model.train(was_training)
    return {
        "loss": float(nats / max(n_tokens, 1)),
        "bpb": float(text_nats / (math.log(2) * max(n_bytes, 1))),
        "tokens": n_tokens,
        "bytes": n_bytes,
    }


def eval_loader(docs, tok: Tokenizer, seq_len: int, batch_rows: int) -> PackedLoader:
    """One ordered pass over docs, no FIM: every token is predicted exactly once."""
    return PackedLoader(docs, seq_len, batch_rows, tok.eot_id, shuffle=False, passes=1, streams=1)


def token_bytes_tensor(tok: Tokenizer) -> torch.Tensor:
    return torch.tensor(tok.token_bytes(), dtype=torch.int64)


def compression_bpb(texts: list[str]) -> dict:
    """Bits per byte of gzip -9 and xz -9e on the concatenated texts: what a model must beat to have learned
    more than a general-purpose compressor finds in the same validation text."""
    raw = "".join(texts).encode()
    return {"gzip": 8 * len(gzip.compress(raw, compresslevel=9, mtime=0)) / len(raw),
            "xz": 8 * len(lzma.compress(raw, preset=9 | lzma.PRESET_EXTREME)) / len(raw),
            "bytes": len(raw)}


def unigram_entropy(docs, vocab_size: int, eot_id: int) -> float:
    """Entropy in nats of the corpus's unigram token distribution: the loss of a model that ignores context."""
    counts = np.zeros(vocab_size, dtype=np.int64)
    for ids in docs:
        counts += np.bincount(np.asarray(ids, dtype=np.int64), minlength=vocab_size)
    counts[eot_id] += len(docs)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def evaluate_languages(model: Transformer, tok: Tokenizer, paths: list[str], seq_len: int = 0,
                       batch_rows: int = 16) -> dict:
    """{"overall": ..., "languages": {name: ...}, "documents", "skipped"}; a file's language comes from its name.

    Runs in the model's own weight dtype: the caller chose it (measured or asked for)."""
    from codelm.data.languages import language_of
    from codelm.data.tokenize import Corpus

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
    languages = {name: {**evaluate(model, eval_loader(docs, tok, seq_len, batch_rows), token_bytes_tensor(tok),
                                   autocast, device), "documents": len(docs)}
                 for name, docs in sorted(groups.items(), key=lambda kv: -len(kv[1]))}
    total = {key: sum(r[key] for r in languages.values()) for key in ("tokens", "bytes", "documents")}
    # bpb and loss are ratios: the overall values weight each language by its bytes and tokens
    total["bpb"] = sum(r["bpb"] * r["bytes"] for r in languages.values()) / max(total["bytes"], 1)
    total["loss"] = sum(r["loss"] * r["tokens"] for r in languages.values()) / max(total["tokens"], 1)
    return {"overall": total, "languages": languages, "skipped": dict(corpus.skipped)}
