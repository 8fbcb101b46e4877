"""Read code from disk into Documents: the stdlib default corpus or any directory.

Reading never stops on a bad file: unreadable, binary, non-UTF-8, empty or
oversized files are skipped and counted by reason in `CorpusStats`. Exact
duplicates (same content hash) keep their first occurrence in sorted path
order. The train/validation split is a hash of each file's path, so it is
stable across runs, machines and corpus growth.
"""

import hashlib
import os
import sysconfig
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from codelm.errors import UserError

# Extension -> language. A directory contributes the files whose extension is listed here.
LANGUAGES = {
    ".py": "Python", ".pyi": "Python", ".c": "C", ".h": "C", ".cc": "C++", ".cpp": "C++", ".cxx": "C++",
    ".hpp": "C++", ".hh": "C++", ".cs": "C#", ".java": "Java", ".kt": "Kotlin", ".scala": "Scala",
    ".go": "Go", ".rs": "Rust", ".js": "JavaScript", ".mjs": "JavaScript", ".jsx": "JavaScript",
    ".ts": "TypeScript", ".tsx": "TypeScript", ".rb": "Ruby", ".php": "PHP", ".swift": "Swift",
    ".m": "Objective-C", ".sh": "Shell", ".bash": "Shell", ".lua": "Lua", ".pl": "Perl", ".r": "R",
    ".jl": "Julia", ".hs": "Haskell", ".ml": "OCaml", ".ex": "Elixir", ".erl": "Erlang", ".clj": "Clojure",
    ".dart": "Dart", ".sql": "SQL", ".html": "HTML", ".css": "CSS", ".md": "Markdown", ".rst": "reStructuredText",
    ".json": "JSON", ".yaml": "YAML", ".yml": "YAML", ".toml": "TOML", ".f90": "Fortran", ".zig": "Zig",
    ".nim": "Nim", ".tex": "TeX", ".vim": "Vim script", ".ps1": "PowerShell", ".cmake": "CMake",
}
MAX_FILE_BYTES = 1_000_000


@dataclass
class Document:
    text: str
    path: str  # relative to the source root, '/'-separated
    source: str  # the root it came from
    lang: str = ""


@dataclass
class CorpusStats:
    files_seen: int = 0
    files_kept: int = 0
    bytes_kept: int = 0
    skipped: Counter = field(default_factory=Counter)  # reason -> count

    def as_dict(self) -> dict:
        return {
            "files_seen": self.files_seen,
            "files_kept": self.files_kept,
            "bytes_kept": self.bytes_kept,
            "skipped": dict(sorted(self.skipped.items())),
        }


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def _candidate_files(root: Path, stdlib: bool) -> Iterator[Path]:
    """Files under root in sorted order, skipping hidden directories (and site-packages for the stdlib)."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and not (stdlib and d == "site-packages"))
        for name in sorted(filenames):
            path = Path(dirpath) / name
            if stdlib and path.suffix != ".py":
                continue
            yield path


def _read_text(path: Path, stats: CorpusStats) -> str | None:
    """The file's text, or None after counting why it was skipped."""
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            stats.skipped["too_large"] += 1
            return None
        data = path.read_bytes()
    except OSError:
        stats.skipped["unreadable"] += 1
        return None
    if not data.strip():
        stats.skipped["empty"] += 1
        return None
    if b"\x00" in data:
        stats.skipped["binary"] += 1
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        stats.skipped["not_utf8"] += 1
        return None


def read_documents(paths: list[str | Path] | None, stats: CorpusStats) -> Iterator[Document]:
    """Stream documents from files and directories (None: the stdlib), dropping exact duplicates.

    Paths are checked here, before anything is read, so a typo fails at once.
    """
    stdlib = not paths
    roots = [stdlib_root()] if stdlib else [Path(p) for p in paths]
    for root in roots:
        if not root.exists():
            raise UserError(f"corpus path not found: {root}")
    return _iter_documents(roots, stdlib, stats)


def _iter_documents(roots: list[Path], stdlib: bool, stats: CorpusStats) -> Iterator[Document]:
    seen: set[bytes] = set()
    for root in roots:
        files = [root] if root.is_file() else _candidate_files(root, stdlib)
        for path in files:
            lang = LANGUAGES.get(path.suffix.lower(), "")
            if not lang and root.is_dir() and not stdlib:
                continue  # not a code file; only counted files are candidates
            stats.files_seen += 1
            text = _read_text(path, stats)
            if text is None:
                continue
            data = text.encode()
            digest = hashlib.sha256(data).digest()
            if digest in seen:
                stats.skipped["duplicate"] += 1
                continue
            seen.add(digest)
            stats.files_kept += 1
            stats.bytes_kept += len(data)
            rel = path.name if root.is_file() else path.relative_to(root).as_posix()
            yield Document(text=text, path=rel, source=str(root), lang=lang or "unknown")


def is_validation(path: str, val_fraction: float) -> bool:
    """Deterministic split: a file is in validation iff the hash of its path falls below val_fraction."""
    h = int.from_bytes(hashlib.sha256(path.encode()).digest()[:8], "big")
    return h / 2**64 < val_fraction
