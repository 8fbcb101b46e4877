"""results.json of `codelm eval`: one typed record per task, written by the runner, read by the report and benches.

A record's fields are the file's keys, so a renamed field fails where it is
read back (`EvalResults.load`), not as a missing key deep in a report.
"""

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from codelm.config import CODE_TASKS, EvalConfig, apply_settings
from codelm.eval.bpb import BpbScore
from codelm.eval.contamination import ContaminationReport
from codelm.eval.hallucination import HallucinationReport
from codelm.eval.repair import RepairReport
from codelm.eval.uncertainty import UncertaintyReport
from codelm.io import atomic_write_json


@dataclass
class HumanEvalScore:
    """pass@k of a code task: HumanEval, MBPP, HumanEval+ or MBPP+ (one record shape, keyed by the task's name)."""
    problems: int
    n: int  # completions per problem
    prompting: str  # base | chat | chat, zero-shot CoT
    few_shot: int
    pass_at_k: dict[str, float]  # for the requested k <= n
    curve: dict[str, float]  # pass@k for every k from 1 to n
    statuses: dict[str, int]  # sandbox verdicts of all completions
    generate_seconds: float
    passed_problems: list[str]
    seconds: float = 0.0
    syntax_errors: float | None = None  # share of programs (prompt + completion) with a syntax error
    unfinished: float | None = None  # share cut at the token limit that are a valid start of a program
    backtracks: float | None = None  # --constrain python: times per completion the constraint went back
    defines_entry_point: float | None = None  # chat: share of replies whose code defines the function asked for
    uncertainty: UncertaintyReport | None = None  # --uncertainty: semantic entropy, selection by agreement
    hallucination: HallucinationReport | None = None  # names and APIs that do not exist, and failing
    repair: RepairReport | None = None  # --repair: pass@1 per round, and the equal-budget baseline

    @classmethod
    def from_json(cls, d: dict) -> "HumanEvalScore":
        uncertainty, flags, repaired = d.get("uncertainty"), d.get("hallucination"), d.get("repair")
        return cls(**{**d, "uncertainty": UncertaintyReport.from_json(uncertainty) if uncertainty else None,
                      "hallucination": HallucinationReport(**flags) if flags else None,
                      "repair": RepairReport(**repaired) if repaired else None})

    def summary(self) -> str:
        scores = ", ".join(f"pass@{k} {v:.3f}" for k, v in self.pass_at_k.items())
        usable = ("" if self.defines_entry_point is None
                  else f", {100 * self.defines_entry_point:.0f}% of replies define the entry point")
        uncertainty = f"\n{self.uncertainty.summary()}" if self.uncertainty else ""
        uncertainty += f"\n{self.hallucination.summary()}" if self.hallucination else ""
        uncertainty += f"\n{self.repair.summary()}" if self.repair else ""
        syntax = ("" if self.syntax_errors is None else
                  f", {100 * self.syntax_errors:.0f}% syntax errors, {100 * self.unfinished:.0f}% cut unfinished")
        constrained = "" if self.backtracks is None else f" (python-constrained, {self.backtracks:.1f} backtracks each)"
        return f"{scores} over {self.problems} problems ({self.statuses}){syntax}{constrained}{usable}{uncertainty}"


@dataclass
class InfillingScore:
    task: str
    tasks: int  # evaluated
    of: int  # in the benchmark
    n: int
    pass_at_1: float
    exact_match: float
    statuses: dict[str, int]
    seconds: float = 0.0

    @classmethod
    def from_json(cls, d: dict) -> "InfillingScore":
        return cls(**d)

    def summary(self) -> str:
        return f"{self.task}: pass@1 {self.pass_at_1:.3f}, exact match {self.exact_match:.3f} over {self.tasks} tasks"


TaskScore = HumanEvalScore | InfillingScore | BpbScore | ContaminationReport
RECORDS = {**{task: HumanEvalScore for task in CODE_TASKS}, "humaneval-infill-single": InfillingScore,
           "humaneval-infill-multi": InfillingScore, "bpb": BpbScore, "contamination": ContaminationReport}


@dataclass
class EvalResults:
    checkpoint: str | None
    settings: EvalConfig
    precision: str | None  # what the engine ran in (None: no model task)
    tasks: dict[str, TaskScore]
    sandbox_isolation: str | None = None  # how generated code was confined (None: nothing ran)
    seconds: float = 0.0

    def save(self, path: Path):
        atomic_write_json(path, asdict(self))

    @classmethod
    def load(cls, path: Path) -> "EvalResults":
        d = json.loads(Path(path).read_text())
        tasks = {name: RECORDS[name].from_json(task) for name, task in d["tasks"].items()}
        return cls(**{**d, "settings": apply_settings(EvalConfig(), d["settings"]), "tasks": tasks})
