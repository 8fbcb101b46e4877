"""What the synth stages share: the corpus reader, the unsafe-module lists, dedup and decontamination, rows
written whole with their stats beside them.

One copy of each, so mined and teacher-written rows are filtered alike and a change to a filter reaches all.
"""

import ast
import hashlib
import json
import re
import sys
import time
import warnings
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from codelm.data.decontam import BenchmarkIndex, DecontamConfig, humaneval_items
from codelm.data.dedup import DedupConfig, NearDuplicateIndex
from codelm.data.languages import language_of
from codelm.data.sources import CodeTreeReader
from codelm.errors import UserError
from codelm.io import atomic_write_bytes, atomic_write_json
from codelm.tokenizer import FILE_SEP

# process, file, network and interpreter state: code using them is no self-contained exercise, and its tests
# could touch the machine
UNSAFE_MODULES = frozenset(
    "os sys subprocess socket socketserver shutil pathlib io tempfile glob urllib http ftplib smtplib poplib "
    "imaplib nntplib telnetlib ssl xmlrpc webbrowser select selectors signal mmap fcntl pty tty termios resource "
    "multiprocessing concurrent threading _thread asyncio ctypes importlib runpy pickle shelve dbm sqlite3 "
    "zipfile tarfile gzip bz2 lzma zipimport logging platform getpass pwd grp sysconfig site builtins gc "
    "inspect atexit faulthandler tracemalloc".split())
UNSAFE_BUILTINS = frozenset("open input exec eval compile __import__ breakpoint exit quit globals help".split())
FENCE = re.compile(r"```[ \t]*([\w+.-]*)[^\n]*\n(.*?)```", re.S)


def source_files(corpus: Path, skipped: Counter) -> Iterator[tuple[str, dict]]:
    """(text, metadata) of each Python file: from a `codelm curate` output's Parquet shards (a corrupt shard is
    skipped, counted and named on stderr), else from a directory or file of code (codelm's tree reader)."""
    if not (corpus / "stats.json").is_file():
        reader = CodeTreeReader(str(corpus), only_python=True)
        yield from ((doc.text, doc.metadata) for doc in reader())
        skipped.update(reader.skipped())
        return
    shards = sorted((corpus / "data").glob("**/*.parquet"))
    if not shards:
        raise UserError(f"curated corpus {corpus} has no shards under data/")
    for shard in shards:
        try:
            table = pq.read_table(shard, columns=["text", "metadata"])
        except (pa.ArrowException, OSError) as e:
            skipped["corrupt_shard"] += 1
            print(f"codelm: skipping unreadable shard {shard}: {str(e).splitlines()[0]}", file=sys.stderr)
            continue
        for text, meta in zip(table.column("text").to_pylist(), table.column("metadata").to_pylist()):
            for file_text, file_meta in repository_files(text, meta):
                if file_meta.get("lang") == "Python":
                    yield file_text, file_meta
                else:
                    skipped["not_python"] += 1


def repository_files(text: str, meta: dict) -> Iterator[tuple[str, dict]]:
    """The files of a repository-layout document (`<file_sep>path\\ncode` after each marker), or the document."""
    specials = json.loads(meta.get("specials") or "[]")
    if not specials:
        yield text, meta
        return
    ends = [start for start, _ in specials[1:]] + [len(text)]
    for (start, end), stop in zip(specials, ends):
        if text[start:end] == FILE_SEP:
            path, _, body = text[end:stop].partition("\n")
            yield body, {**meta, "path": path, "lang": language_of(path, body[:200].split("\n", 1)[0])}


def unsafe_use(tree: ast.AST) -> str | None:
    """"unsafe_module" or "unsafe_builtin" when a whole program imports or calls what UNSAFE_* name, else None.
    (The miner resolves the names a function reads through its module's imports instead.)"""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import) and {a.name.split(".")[0] for a in node.names} & UNSAFE_MODULES:
            return "unsafe_module"
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in UNSAFE_MODULES:
            return "unsafe_module"
    if any(isinstance(node, ast.Name) and node.id in UNSAFE_BUILTINS for node in ast.walk(tree)):
        return "unsafe_builtin"
    return None


class Novelty:
    """Exact and near duplicates of what came before (the curation's MinHash settings), and overlap with
    HumanEval (the curation's decontamination index): one instance per run, fed every candidate in order."""

    def __init__(self):
        self.seen: set[str] = set()
        self.near = NearDuplicateIndex(DedupConfig())
        self.decontam = DecontamConfig()
        self.benchmark = BenchmarkIndex(humaneval_items(), self.decontam.ngram)

    def reason(self, key: str, text: str, checked: str) -> str | None:
        """Why the candidate is dropped, or None. key: its normalised form for exact dedup; text: what is
        compared for near duplicates; checked: what must not contain benchmark material."""
        digest = hashlib.sha256(key.encode()).hexdigest()
        if digest in self.seen:
            return "exact_duplicate"
        self.seen.add(digest)
        if self.near.add(text):
            return "near_duplicate"
        return "contaminated" if self.contaminated(checked) else None

    def contaminated(self, text: str) -> bool:
        return bool(self.benchmark.matches(text, self.decontam.min_overlap))


class Counts:
    """For a stage's stats dataclass with `dropped` and `skipped` Counters: JSON and the one-line reasons."""

    dropped: Counter
    skipped: Counter

    def to_dict(self) -> dict:
        return {k: dict(v.most_common()) if isinstance(v, Counter) else v for k, v in vars(self).items()}

    def reasons(self) -> str:
        dropped = ", ".join(f"{k} {v}" for k, v in self.dropped.most_common()) or "none"
        skipped = ", ".join(f"{k} {v}" for k, v in self.skipped.most_common())
        return f"dropped: {dropped}" + (f"; files skipped: {skipped}" if skipped else "")


def stats_path(out: Path) -> Path:
    return out.with_name(f"{out.name.removesuffix('.jsonl')}.stats.json")


def write_rows(out: Path, rows: list[dict], stats: dict):
    """OUT (one JSON row a line) and its .stats.json beside it, each written whole or not at all."""
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out, (json.dumps(row, ensure_ascii=False).encode() + b"\n" for row in rows))
    atomic_write_json(stats_path(out), stats)


def parse_code(code: str) -> ast.Module | None:
    """The module, or None where it does not parse."""
    try:
        with warnings.catch_warnings():  # invalid escapes and the like: not ours to report
            warnings.simplefilter("ignore")
            return ast.parse(code)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None


def python_blocks(text: str) -> list[str]:
    """The closed ``` blocks of a reply marked Python or not marked at all."""
    return [body for lang, body in FENCE.findall(text) if lang.lower() in ("", "python", "py", "python3")]


@dataclass
class TeacherStats(Counts):
    """What a teacher stage (oss-instruct, magpie) asked, kept and dropped, in OUT.stats.json."""

    teacher: str = ""  # the teacher's id, as in the rows' provenance
    requests: int = 0  # prompts sent to the teacher (Magpie: the invented requests and the answers)
    rows: int = 0
    rows_with_tests: int = 0
    seconds: float = 0.0
    dropped: Counter = field(default_factory=Counter)  # per filter, see the stage's module docstring
    skipped: Counter = field(default_factory=Counter)  # corpus files and shards not read, by reason

    def summary(self, stage: str, out: str) -> str:
        return (f"synth {stage}: {self.rows} rows ({self.rows_with_tests} with tests) from {self.requests} "
                f"requests to {self.teacher}, {self.seconds:.0f}s -> {out}; {self.reasons()}")

    def write(self, stage: str, rows: list[dict], cfg, generator: str, started: float):
        """The rows and these stats to cfg.out, or a UserError (nothing written) when no row survived."""
        self.seconds = time.perf_counter() - started
        if not rows:
            raise UserError(f"synth {stage}: no rows kept from {self.requests} requests to {self.teacher} "
                            f"({self.reasons()})")
        self.rows = len(rows)
        self.rows_with_tests = sum(1 for row in rows if row["tests"])
        write_rows(Path(cfg.out), rows, {**self.to_dict(), "config": asdict(cfg), "generator": generator})
