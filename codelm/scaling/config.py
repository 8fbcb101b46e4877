"""Settings of `codelm scaling sweep` and `codelm scaling fit`: the only home of their defaults, which the CLI shows.

Kept apart from the stages, with no heavy imports, so that the CLI builds its parser without importing torch.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from codelm.config import knob
from codelm.errors import UserError

ParamConvention = Literal["total", "non_embedding", "matmul"]  # described in codelm.scaling.flops
TRAINING_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "tiny.toml"  # the speedrun's settings


@dataclass
class SweepConfig:
    """An IsoFLOP grid: every budget x every depth of one model family, each run trained to its budget."""

    tokens: str = knob("", "a `codelm tokenize` output directory (its tokenizer sets the vocabulary)")
    out: str = knob("", "the sweep directory")
    config: str = knob("", "the training config (TOML) every run starts from ('': the speedrun's tiny.toml); the "
                       "family replaces its model shape")
    overrides: list[str] = knob(help="training config settings (KEY=VALUE), after the sweep's own", factory=list,
                                metavar="KEY=VALUE")
    budgets: list[float] = knob(help="training FLOPs per run (docs/results/scaling.md: why these)",
                                factory=lambda: [2e12, 3e12, 4e12], comma=True)
    depths: list[int] = knob(help="the size knob: layers = heads = depth", factory=lambda: [1, 2, 3, 4], comma=True)
    aspect: int = knob(16, "model width per unit of depth: dim = aspect x depth, heads of `aspect` each")
    min_steps: int = knob(20, "a run with fewer optimizer steps is left out of its budget's curve")
    emit_commands: bool = knob(False, "print one `codelm pretrain` command per pending run instead of training")

    def check(self):
        if not (self.tokens and self.out):
            raise UserError("--tokens and --out are required")
        if not self.budgets or not self.depths:
            raise UserError("--budgets and --depths must name at least one value each")
        if min(self.budgets) <= 0 or min(self.depths) < 1 or self.min_steps < 1:
            raise UserError("--budgets must be > 0, --depths and --min-steps >= 1")
        if self.aspect < 2 or self.aspect % 2:
            raise UserError(f"--aspect must be even (it is the head size, split in halves by RoPE), got {self.aspect}")


@dataclass
class FitConfig:
    """The three Chinchilla approaches on a sweep's results, with bootstrap intervals."""

    results: str = knob("", "a sweep directory, or its results.csv")
    out: str = knob("", "output directory ('': the sweep's)")
    params: ParamConvention = knob("total", "the parameter count used as N")
    bootstrap: int = knob(200, "resamples of the runs (within each budget) for the intervals")
    seed: int = knob(0, "the resampling seed")

    def check(self):
        if not self.results:
            raise UserError("give the sweep's results: codelm scaling fit DIR")
        if self.bootstrap < 0:
            raise UserError("--bootstrap must be >= 0")
