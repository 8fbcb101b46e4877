"""Files and directories written whole or not at all.

Everything codelm writes that another stage reads (checkpoints, shards, stats,
results, caches) goes through here: write a temporary sibling, flush it to
disk, rename it over the target. A crash or a full disk leaves the old file or
nothing, never half of one. What users hand in as JSONL is read here too, with
errors that name the file and line.
"""

import json
import os
import shutil
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from codelm.errors import UserError


def atomic_write_bytes(path: str | Path, chunks: Iterable[bytes]):
    """Write the chunks to PATH.<pid>.tmp, fsync, rename; the pid keeps concurrent writers apart."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            for chunk in chunks:
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: str | Path, text: str):
    atomic_write_bytes(path, [text.encode()])


def atomic_write_json(path: str | Path, obj, indent: int | None = 2):
    atomic_write_text(path, json.dumps(obj, indent=indent, default=str) + "\n")


@contextmanager
def atomic_directory(out: str | Path) -> Iterator[Path]:
    """A fresh sibling directory to fill; it replaces `out` only if the block finishes."""
    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    yield tmp
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)


def jsonl_rows(path: str | Path, what: str) -> Iterator[tuple[str, object]]:
    """("file:line", row) for every non-blank line of a JSONL file; a missing file or a line that is not JSON is a
    UserError naming `what` the file should hold, or the line."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} not found: {path}")
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                yield where, json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{where} is not valid JSON: {e}") from None
