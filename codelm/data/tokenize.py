"""The corpus stages: train a tokenizer on the training split, and tokenize a corpus into shards.

Both read the corpus as a stream (sources.read_documents), so memory stays flat
however large it is. `tokenize_corpus` writes

    OUT/train/  OUT/val/   token shards (shards.py)
    OUT/tokenizer.json     a copy, so the directory is all that training needs
    OUT/stats.json         files seen, kept, skipped by reason; documents, bytes, tokens per split

into a temporary directory that replaces OUT only when complete.
"""

import json
import shutil
from itertools import islice
from pathlib import Path

from tqdm import tqdm

from codelm.data.shards import ShardWriter
from codelm.data.sources import CorpusStats, read_documents, is_validation
from codelm.errors import UserError
from codelm.tokenizer import Tokenizer, train_tokenizer

DEFAULT_VAL_FRACTION = 0.05  # 2% of the stdlib is 34 files, one of them a quarter of the tokens: too noisy


def train_tokenizer_on_corpus(
    paths: list[str] | None, out: str | Path, vocab_size: int = 8192, val_fraction: float = DEFAULT_VAL_FRACTION
) -> tuple[Tokenizer, CorpusStats]:
    """Train BPE on the training split only, so validation text stays unseen."""
    stats = CorpusStats()
    docs = (d.text for d in tqdm(read_documents(paths, stats), desc="tokenizer: reading", unit=" files")
            if not is_validation(d.path, val_fraction))
    tok = train_tokenizer(docs, vocab_size=vocab_size)
    if stats.files_kept == 0:
        raise UserError(f"no usable files in {paths or 'the stdlib'} (skipped: {dict(stats.skipped)})")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tok.save(out)
    return tok, stats


def _batched(iterable, n):
    it = iter(iterable)
    while chunk := list(islice(it, n)):
        yield chunk


def tokenize_corpus(
    paths: list[str] | None, tokenizer_path: str | Path, out_dir: str | Path, val_fraction: float = DEFAULT_VAL_FRACTION
) -> dict:
    tok = Tokenizer.load(tokenizer_path)
    out = Path(out_dir)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    writers = {split: ShardWriter(tmp / split, tok.vocab_size) for split in ("train", "val")}
    split_stats = {split: {"docs": 0, "bytes": 0, "tokens": 0} for split in writers}
    stats = CorpusStats()
    docs = tqdm(read_documents(paths, stats), desc="tokenize", unit=" files")
    for chunk in _batched(docs, 64):
        for doc, ids in zip(chunk, tok.encode_batch([d.text for d in chunk])):
            split = "val" if is_validation(doc.path, val_fraction) else "train"
            writers[split].add(ids)
            s = split_stats[split]
            s["docs"] += 1
            s["bytes"] += len(doc.text.encode())
            s["tokens"] += len(ids)
    for split, writer in writers.items():
        if split_stats[split]["docs"] == 0:
            raise UserError(f"the {split} split is empty: the corpus has too few usable files ({stats.files_kept} kept)")
        writer.close({"split": split})
    shutil.copyfile(tokenizer_path, tmp / "tokenizer.json")
    result = {"sources": [str(p) for p in paths] if paths else ["stdlib"], "val_fraction": val_fraction,
              **stats.as_dict(), "splits": split_stats}
    (tmp / "stats.json").write_text(json.dumps(result, indent=2))
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return result
