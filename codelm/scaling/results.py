"""The sweep's one table (results.csv, and results.md with the conventions), written by the sweep, read by the fit.

A row is one run: its grid cell, its size under every parameter convention, the FLOPs it was planned to spend and
the validation loss it reached. Typed records, so a renamed column fails where it is defined.
"""

import csv
import io
from dataclasses import astuple, dataclass, fields
from pathlib import Path

from codelm.errors import UserError
from codelm.io import atomic_write_text
from codelm.scaling.flops import CONVENTIONS, FLOPS_FORMULA


@dataclass
class Run:
    name: str
    budget: float  # the grid's FLOPs budget
    depth: int
    n_layers: int
    dim: int
    n_heads: int
    params_total: int
    params_non_embedding: int
    params_matmul: int
    flops_per_token: int  # exact, training (codelm.scaling.flops)
    steps: int
    tokens: int
    flops: float  # what the run spends: tokens x flops_per_token (the budget, up to rounding to whole steps)
    status: str = "pending"  # pending | done
    val_loss: float = float("nan")  # nats per token on the whole validation split, at the end
    val_bpb: float = float("nan")
    train_seconds: float = float("nan")

    def params(self, convention: str) -> int:
        return getattr(self, f"params_{convention}")


COLUMNS = [f.name for f in fields(Run)]


def write_table(out: Path, runs: list[Run], card: str):
    """OUT/results.csv (for the fit) and OUT/results.md: the data card, then the same table in markdown."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(COLUMNS)
    writer.writerows(astuple(run) for run in runs)
    atomic_write_text(out / "results.csv", text.getvalue())
    shown = ["name", "budget", "n_layers", "dim", "params_total", "params_non_embedding", "flops_per_token", "steps",
             "tokens", "status", "val_loss", "val_bpb"]
    rows = ["| " + " | ".join(shown) + " |", "|" + "---|" * len(shown)]
    rows += ["| " + " | ".join(f"{getattr(run, name):.4g}" if isinstance(getattr(run, name), float)
                               else str(getattr(run, name)) for name in shown) + " |" for run in runs]
    atomic_write_text(out / "results.md", card + "\n\n## Runs\n\n" + "\n".join(rows) + "\n")


def read_table(path: str | Path) -> list[Run]:
    """The runs of results.csv (or of the sweep directory holding it)."""
    path = Path(path)
    if path.is_dir():
        path = path / "results.csv"
    if not path.is_file():
        raise UserError(f"no sweep results at {path}: run `codelm scaling sweep` first")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames != COLUMNS:
            raise UserError(f"{path} is not a sweep table: its columns are {reader.fieldnames}, expected {COLUMNS}")
        return [Run(**{f.name: f.type(row[f.name]) for f in fields(Run)}) for row in reader]


def conventions_text() -> str:
    """The parameter-counting and FLOPs conventions, as every card states them."""
    return "\n".join([f"- N counted as `{name}`: {text}" for name, text in CONVENTIONS.items()]
                     + [f"- C: {FLOPS_FORMULA}"])
