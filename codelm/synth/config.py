"""Settings of the synth stages: the only home of their defaults, which the CLI shows.

Kept apart from the stages, with no heavy imports, so that `codelm` builds its
parser from these fields without importing datatrove or the sandbox (the
shared codelm/config.py holds the training and evaluation configs).
"""

from dataclasses import dataclass

from codelm.errors import UserError


@dataclass
class MineConfig:
    """`codelm synth mine`: which corpus, where the rows go, and the filters' bounds."""

    corpus: str
    out: str
    max_lines: int = 60  # the function as written, docstring and decorators included
    max_chars: int = 3000
    min_docstring_words: int = 3  # "Helper." is no request
    limit: int = 0  # stop after this many rows (0: all)
    seed: int = 0  # picks each row's phrasing template
    tests: bool = True  # run doctests in the sandbox: record asserts, drop functions that fail their own
    workers: int = 0  # sandbox processes (0: one per core)

    def __post_init__(self):
        if self.max_lines < 1 or self.max_chars < 1:
            raise UserError("--max-lines and --max-chars must be >= 1")
        if self.limit < 0 or self.workers < 0 or self.min_docstring_words < 0:
            raise UserError("--limit and --workers must be >= 0")
