"""Settings of `codelm scaling sweep` and `codelm scaling fit`: the only home of their defaults, which the CLI shows.

Kept apart from the stages, with no heavy imports, so that the CLI builds its parser without importing torch.
"""

from dataclasses import dataclass, field
from pathlib import Path

from codelm.errors import UserError

TRAINING_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "tiny.toml"  # the speedrun's settings
PARAM_CONVENTIONS = ["total", "non_embedding", "matmul"]  # described in codelm.scaling.flops


@dataclass
class SweepConfig:
    """An IsoFLOP grid: every budget x every depth of one model family, each run trained to its budget."""

    tokens: str  # a `codelm tokenize` output directory
    out: str
    config: str = str(TRAINING_CONFIG)  # training settings; the family replaces the model's shape
    overrides: list[str] = field(default_factory=list)  # --set KEY=VALUE, after the sweep's own settings
    # 3.6e13 FLOPs in all, 21-27 minutes on a quiet 2-core AVX2 CPU (README); at aspect 16 every budget's
    # minimum lies inside the depths, at 1e12 the smallest model still won, at aspect 32 it won every budget
    budgets: list[float] = field(default_factory=lambda: [2e12, 3e12, 4e12])  # training FLOPs per run
    depths: list[int] = field(default_factory=lambda: [1, 2, 3, 4])  # the size knob: layers = heads = depth
    aspect: int = 16  # model width per unit of depth: dim = aspect x depth, heads of `aspect` each
    min_steps: int = 20  # a run with fewer optimizer steps is left out of its budget's curve
    emit_commands: bool = False  # print one `codelm pretrain` command per pending run instead of training

    def __post_init__(self):
        if not self.budgets or not self.depths:
            raise UserError("--budgets and --depths must name at least one value each")
        if min(self.budgets) <= 0 or min(self.depths) < 1 or self.min_steps < 1:
            raise UserError("--budgets must be > 0, --depths and --min-steps >= 1")
        if self.aspect < 2 or self.aspect % 2:
            raise UserError(f"--aspect must be even (it is the head size, split in halves by RoPE), got {self.aspect}")


@dataclass
class FitConfig:
    """The three Chinchilla approaches on a sweep's results, with bootstrap intervals."""

    results: str  # a sweep directory, or its results.csv
    out: str = ""  # default: beside the results
    params: str = "total"  # which parameter count is N (PARAM_CONVENTIONS)
    bootstrap: int = 200  # resamples of the runs (within each budget) for the intervals
    seed: int = 0

    def __post_init__(self):
        if self.params not in PARAM_CONVENTIONS:
            raise UserError(f"--params must be one of {', '.join(PARAM_CONVENTIONS)}, got {self.params!r}")
        if self.bootstrap < 0:
            raise UserError("--bootstrap must be >= 0")
