"""Curation benchmark: pipeline throughput on the stdlib, and near-dedup recall/precision on planted pairs.

    python bench/curate.py [--pairs 200] [--tasks 2]

1. Throughput: `codelm curate` (defaults: filters, PII, decontamination, exact + near dedup) on this
   Python's standard library; MB/s and files/s over the whole run, stage start-up included.
2. Near-dedup quality: a corpus of N stdlib files plus, for each, a planted near-duplicate (two
   identifiers renamed, three lines edited). Recall = planted pairs found; precision = removals whose
   file really is a near-duplicate of what was kept (a planted copy, or an exact shingle Jaccard
   >= the threshold with the kept file: the stdlib has real near-duplicates too, e.g. encodings/cp*.py).
"""

import argparse
import json
import random
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from codelm.data.ngrams import WORDS, TokenHasher, ngram_hashes  # noqa: E402
from codelm.data.pipeline import curate, load_curate_config  # noqa: E402
from codelm.data.sources import stdlib_root  # noqa: E402


def plant_near_duplicate(text: str, seed: int = 0) -> str:
    """Two mid-frequency identifiers renamed and three lines edited: what a fork or a copy-paste looks like."""
    rng = random.Random(seed)
    counts: dict[str, int] = {}
    for word in re.findall(r"\b[a-z_][a-z0-9_]{5,}\b", text):
        counts[word] = counts.get(word, 0) + 1
    names = sorted((n for n, c in counts.items() if c >= 2), key=lambda n: (counts[n], n))
    middle = names[len(names) // 3: 2 * len(names) // 3] or names
    for i, name in enumerate(rng.sample(middle, min(2, len(middle)))):
        text = re.sub(rf"\b{name}\b", f"{name}_v{i}", text)
    lines = text.splitlines()
    for i in rng.sample(range(len(lines)), min(3, len(lines))):
        lines[i] = lines[i] + "  # edited"
    return "\n".join(lines) + "\n"


def jaccard(a: str, b: str, hasher: TokenHasher, n: int = 5) -> float:
    sa = set(ngram_hashes(hasher(WORDS.findall(a)), n).tolist())
    sb = set(ngram_hashes(hasher(WORDS.findall(b)), n).tolist())
    return len(sa & sb) / max(len(sa | sb), 1)


def throughput(tasks: int, work: Path) -> dict:
    files = [p for p in stdlib_root().rglob("*.py") if "site-packages" not in p.parts]
    size = sum(p.stat().st_size for p in files)
    cfg = load_curate_config(None, [], [f"executor.tasks={tasks}"])
    start = time.time()
    curate(cfg, work / "stdlib")
    seconds = time.time() - start
    return {"files": len(files), "MB": size / 1e6, "seconds": seconds, "MB/s": size / 1e6 / seconds,
            "files/s": len(files) / seconds}


def near_dedup_quality(pairs: int, tasks: int, work: Path) -> dict:
    candidates = sorted(p for p in stdlib_root().glob("*.py") if p.stat().st_size > 2000)
    candidates += sorted(p for p in stdlib_root().glob("*/*.py")
                         if "site-packages" not in p.parts and "test" not in p.parts[-2] and p.stat().st_size > 2000)
    rng = random.Random(0)
    chosen = sorted(rng.sample(candidates, min(pairs, len(candidates))))
    corpus = work / "planted"
    texts = {}
    for i, path in enumerate(chosen):
        original = path.read_text(errors="replace")
        name = f"{i:04d}_{path.stem}"
        texts[f"{name}.py"] = original
        texts[f"{name}_planted.py"] = plant_near_duplicate(original, seed=i)
    corpus.mkdir(parents=True)
    for name, text in texts.items():
        (corpus / name).write_text(text)
    cfg = load_curate_config(None, [str(corpus)], [f"executor.tasks={tasks}", "pii.enabled=false",
                                                   "decontam.humaneval=false"])
    curate(cfg, work / "planted_out")
    hasher = TokenHasher()
    planted_j = [
        jaccard(texts[n.replace("_planted.py", ".py")], texts[n], hasher) for n in texts if n.endswith("_planted.py")
    ]
    found, correct, removed = 0, 0, 0
    for line in (work / "planted_out" / "near_duplicates.jsonl").read_text().splitlines():
        cluster = json.loads(line)
        kept = cluster["kept"].split("/", 1)[1]
        for other in cluster["removed"]:
            other = other.split("/", 1)[1]
            removed += 1
            is_pair = kept.split("_")[0] == other.split("_")[0]
            found += is_pair
            correct += is_pair or jaccard(texts[kept], texts[other], hasher) >= cfg.dedup.threshold
    return {
        "pairs": len(chosen),
        "found": found,
        "recall": found / len(chosen),
        "removed": removed,
        "precision": correct / max(removed, 1),
        "planted_jaccard_min": min(planted_j),
        "planted_jaccard_median": sorted(planted_j)[len(planted_j) // 2],
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=200)
    parser.add_argument("--tasks", type=int, default=2)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="codelm-bench-curate-"))
    try:
        speed = throughput(args.tasks, work)
        quality = near_dedup_quality(args.pairs, args.tasks, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("\n== codelm curate on the stdlib ==")
    print(
        f"{speed['files']} files, {speed['MB']:.1f} MB in {speed['seconds']:.1f} s: "
        f"{speed['MB/s']:.2f} MB/s, {speed['files/s']:.1f} files/s ({args.tasks} tasks)"
    )
    print("== near-dedup on planted pairs (target: recall >= 0.9 at precision >= 0.99) ==")
    print(
        f"{quality['pairs']} planted pairs (shingle Jaccard min {quality['planted_jaccard_min']:.2f}, median "
        f"{quality['planted_jaccard_median']:.2f}): found {quality['found']}, recall {quality['recall']:.3f}; "
        f"{quality['removed']} removals, precision {quality['precision']:.3f}"
    )


if __name__ == "__main__":
    main()
