"""Where code comes from: directories, git working trees, Stack-shaped JSONL/Parquet, the stdlib.

Each source is a datatrove reader that yields Documents whose metadata always
has the same keys (so Parquet shards get one schema):

    repo, path, lang, size, stars (-1 unknown), license ("" unknown), source

Reading never stops on a bad file: symlinks, non-regular files, unreadable,
oversized, empty, binary and non-UTF-8 files are skipped and counted under
`skipped_<reason>` in the step's stats. Directory trees are walked with an
explicit stack (no recursion limit on deep nesting) and never follow symlinks
(no loops). In a git working tree only tracked files are read, so .gitignore'd
build output never enters the corpus.
"""

import hashlib
import os
import stat as stat_mod
import subprocess
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from datatrove.data import Document
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.readers import JsonlReader, ParquetReader

from codelm.config import knob
from codelm.data.languages import language_of
from codelm.errors import UserError

MAX_FILE_BYTES = 1_000_000  # StarCoder's cap; a larger file is skipped unread


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def document(text: str, repo: str, path: str, lang: str, source: str, stars: int = -1, license: str = "") -> Document:
    """A Document with codelm's metadata schema; its id is stable across runs (repo + path)."""
    doc_id = hashlib.sha1(f"{repo}/{path}".encode()).hexdigest()[:16]
    meta = {"repo": repo, "path": path, "lang": lang, "size": len(text.encode()), "stars": stars,
            "license": license, "source": source}
    return Document(text=text, id=doc_id, metadata=meta)


def _git_files(root: Path) -> list[str] | None:
    """Files git tracks under root ('/'-separated, relative), or None when root is not in a work tree."""
    try:
        out = subprocess.run(["git", "-C", str(root), "ls-files", "-z", "--cached"], capture_output=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return sorted(p for p in out.stdout.decode("utf-8", "surrogateescape").split("\0") if p)


def _walk_files(root: Path, only_python: bool) -> Iterator[str]:
    """Relative paths under root in sorted order; hidden directories skipped, symlinked dirs not entered."""
    stack = [""]
    while stack:
        rel_dir = stack.pop()
        try:
            entries = sorted(os.scandir(root / rel_dir), key=lambda e: e.name)
        except OSError:
            continue
        subdirs = []
        for entry in entries:
            rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
            if entry.is_dir(follow_symlinks=False):
                if not entry.name.startswith(".") and not (only_python and entry.name == "site-packages"):
                    subdirs.append(rel)
            elif not only_python or entry.name.endswith(".py"):
                yield rel
        stack.extend(reversed(subdirs))  # depth-first, in sorted order


def read_file_text(path: Path, max_bytes: int) -> tuple[str | None, str]:
    """(text, "") or (None, reason); never raises for a bad file."""
    try:
        st = path.lstat()
        if stat_mod.S_ISLNK(st.st_mode):
            return None, "symlink"
        if not stat_mod.S_ISREG(st.st_mode):
            return None, "not_regular_file"
        if st.st_size > max_bytes:
            return None, "too_large"
        data = path.read_bytes()
    except OSError:
        return None, "unreadable"
    if not data.strip():
        return None, "empty"
    if b"\x00" in data:
        return None, "binary"
    try:
        return data.decode("utf-8"), ""
    except UnicodeDecodeError:
        return None, "not_utf8"


class CodeTreeReader(PipelineStep):
    """Files of a directory or git working tree; rank r reads every world_size-th file."""

    type = "📖 - READER"
    name = "🌳 code tree"

    def __init__(self, root: str, repo: str = "", source: str = "", only_python: bool = False,
                 max_bytes: int = MAX_FILE_BYTES):
        super().__init__()
        self.root = Path(root)
        if not self.root.exists():
            raise UserError(f"source path not found: {root}")
        self.repo = repo or self.root.resolve().name
        self.source = source or self.repo
        self.only_python = only_python
        self.max_bytes = max_bytes

    def list_files(self) -> list[str]:
        if self.root.is_file():
            return [self.root.name]
        tracked = None if self.only_python else _git_files(self.root)
        # Nothing tracked: a directory git ignores inside some work tree (e.g. ~/.pyenv/versions), so walk it
        return tracked if tracked else list(_walk_files(self.root, self.only_python))

    def skipped(self) -> dict[str, int]:
        """Files not read so far, by reason (the `skipped_<reason>` stats)."""
        return {k[len("skipped_"):]: v.total for k, v in self.stats.stats.items() if k.startswith("skipped_")}

    def run(self, data=None, rank: int = 0, world_size: int = 1) -> Iterator[Document]:
        base = self.root.parent if self.root.is_file() else self.root
        for rel in self.list_files()[rank::world_size]:
            self.stat_update("files_seen")
            with self.track_time():
                lang = language_of(rel)
                text, reason = read_file_text(base / rel, self.max_bytes)
                if text is not None and not lang:
                    lang = language_of(rel, text[:200].split("\n", 1)[0])
                    reason = "" if lang else "not_code"
                if reason:
                    self.stat_update(f"skipped_{reason}")
                    continue
                self.stat_update("files_read")
            yield document(text, self.repo, rel, lang, self.source)


@dataclass
class StackFields:
    """Column names of a Stack-shaped dataset (configurable for look-alikes)."""

    content: str = knob("content", "column holding the file's text")
    repo: str = knob("max_stars_repo_name", "column holding the repository name")
    path: str = knob("max_stars_repo_path", "column holding the file's path")
    lang: str = knob("lang", "column holding the language")
    stars: str = knob("max_stars_count", "column holding the repository's stars")
    license: str = knob("max_stars_repo_licenses", "column holding the licenses")


class StackAdapter:
    """datatrove reader adapter: a Stack row -> codelm's Document fields (a class so it pickles)."""

    def __init__(self, fields: StackFields, source: str):
        self.fields = fields
        self.source = source

    def __call__(self, reader, row: dict, path: str, id_in_file) -> dict:
        f = self.fields
        text = row.get(f.content) or ""
        file_path = str(row.get(f.path) or f"{Path(path).name}/{id_in_file}")
        lang = row.get(f.lang) or language_of(file_path, text[:200].split("\n", 1)[0])
        license = row.get(f.license) or ""
        if isinstance(license, (list, tuple)) or hasattr(license, "tolist"):
            license = ",".join(map(str, list(license)))
        stars = row.get(f.stars)
        doc = document(text, str(row.get(f.repo) or ""), file_path, str(lang), self.source,
                       stars=int(stars) if stars is not None else -1, license=str(license))
        return {"text": doc.text, "id": doc.id, "metadata": doc.metadata}


class KeepSchema:
    """Reader mixin: datatrove adds a `file_path` to each document's metadata; codelm's schema has none
    (Parquet shards need one schema, and the path of an intermediate file means nothing downstream)."""

    def get_document_from_dict(self, data: dict, source_file: str, id_in_file):
        doc = super().get_document_from_dict(data, source_file, id_in_file)
        if doc is not None:
            doc.metadata.pop("file_path", None)
        return doc


class StackJsonlReader(KeepSchema, JsonlReader):
    name = "🐿 Stack JSONL"


class StackParquetReader(KeepSchema, ParquetReader):
    name = "📒 Stack Parquet"


def stack_reader(path: str, kind: str, fields: StackFields, source: str) -> PipelineStep:
    """A JSONL or Parquet reader over a file or folder of Stack-shaped rows."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"source path not found: {path}")
    folder, glob = (str(p.parent), p.name) if p.is_file() else (str(p), None)
    readers = {"jsonl": (StackJsonlReader, "**/*.jsonl*"), "parquet": (StackParquetReader, "**/*.parquet")}
    reader_cls, default_glob = readers[kind]
    return reader_cls(
        folder,
        glob_pattern=glob or default_glob,
        adapter=StackAdapter(fields, source),
        text_key=fields.content,
        file_progress=False,
    )


def is_validation(key: str, val_fraction: float) -> bool:
    """Deterministic split: a document is in validation iff the hash of its key falls below val_fraction."""
    h = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big")
    return h / 2**64 < val_fraction
