"""metrics.jsonl: what a training run writes per step and per validation, and how readers get it back.

The loop appends records; the report, tests and resume read them through
`read_metrics`, so a renamed field fails where it is defined rather than as a
missing key in a report.
"""

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from codelm.io import atomic_write_text
from codelm.train.validation import HeldOut


@dataclass
class TrainPoint:
    step: int
    loss: float
    lr: float
    grad_norm: float
    tokens: int  # seen so far
    tok_s: float | None = None  # the timing fields are set on logged steps only
    mfu: float | None = None
    elapsed: float | None = None  # seconds of training, across resumes
    metrics: dict[str, float] | None = None  # the objective's own (DPO's reward margins, ...)

    def to_json(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass
class ValPoint:
    step: int
    loss: float
    bpb: float
    tokens: int
    bytes: int
    final: bool = False  # the whole validation split; periodic points use a fixed subset

    @classmethod
    def of(cls, step: int, result: HeldOut, final: bool = False) -> "ValPoint":
        return cls(step=step, final=final, **asdict(result))

    def to_json(self) -> dict:
        record = {"step": self.step, **{f"val_{f.name}": getattr(self, f.name) for f in fields(self)[1:-1]}}
        return record | ({"final": True} if self.final else {})


def append(path: Path, point: TrainPoint | ValPoint):
    with open(path, "a") as f:
        f.write(json.dumps(point.to_json()) + "\n")


def read_metrics(path: Path) -> tuple[list[TrainPoint], list[ValPoint]]:
    train, val = [], []
    for line in Path(path).read_text().splitlines():
        record = json.loads(line)
        if "val_loss" in record:
            val.append(ValPoint(step=record["step"], final=record.get("final", False),
                                **{f.name: record[f"val_{f.name}"] for f in fields(ValPoint)[1:-1]}))
        else:
            train.append(TrainPoint(**record))
    return train, val


def truncate_metrics(path: Path, step: int):
    """Drop records past the checkpoint a run resumes from (they were never saved)."""
    if not path.is_file():
        return
    kept = [line for line in path.read_text().splitlines() if line and json.loads(line).get("step", 0) <= step]
    atomic_write_text(path, "".join(line + "\n" for line in kept))
