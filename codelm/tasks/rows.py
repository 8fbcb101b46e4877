"""Benchmark rows from the files they are published in: JSON Lines (gzipped or not) or one JSON array.

MBPP's mbpp.jsonl and EvalPlus's HumanEvalPlus.jsonl.gz are the first kind,
MBPP's sanitized-mbpp.json the second. A file that is missing or not valid
JSON is a one-line error naming it (and the line).
"""

import gzip
import json
from pathlib import Path

from codelm.errors import UserError


def read_rows(path: str | Path, what: str = "benchmark") -> list[dict]:
    """The objects of a JSONL, JSONL.gz or JSON-array file, in order; `what` names the file in errors."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} file not found: {path}")
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        text = f.read()
    if text.lstrip().startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as e:
            raise UserError(f"{path} is not valid JSON: {e}") from None
    else:
        rows = []
        for number, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise UserError(f"{path}:{number} is not valid JSON: {e}") from None
    bad = next((number for number, row in enumerate(rows, 1) if not isinstance(row, dict)), None)
    if bad is not None:
        raise UserError(f"{path}: row {bad} is not a JSON object")
    return rows
