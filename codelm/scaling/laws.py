"""The parametric law L(N, D) = E + A / N^alpha + B / D^beta and the compute-optimal split it implies.

Minimising L under C = 6ND gives (Hoffmann et al. 2022, eq. 4) N* = G (C/6)^(beta/(alpha+beta)) and
D* = (C/6) / N*, with G = (alpha A / (beta B))^(1/(alpha+beta)). The published constants disagree:
Besiroglu et al. (2024) refitted Chinchilla's own data (Huber loss summed, not averaged, and an optimizer
run to convergence) and found beta = 0.37, not 0.28, which restores ~20 tokens per parameter.
"""

import json
from dataclasses import dataclass
from pathlib import Path

from codelm.errors import UserError


@dataclass(frozen=True)
class Law:
    E: float
    A: float
    B: float
    alpha: float
    beta: float
    name: str = "fit"
    params: str = "total"  # the parameter-counting convention N was measured in (codelm.scaling.flops)

    def loss(self, n, d):
        return self.E + self.A / n**self.alpha + self.B / d**self.beta

    def optimal(self, flops: float) -> tuple[float, float]:
        """(N*, D*) minimising the loss at `flops` = 6ND."""
        g = (self.alpha * self.A / (self.beta * self.B)) ** (1 / (self.alpha + self.beta))
        n = g * (flops / 6) ** (self.beta / (self.alpha + self.beta))
        return n, flops / 6 / n

    def describe(self) -> str:
        return (f"{self.name}: E={self.E:.4g}, A={self.A:.4g}, B={self.B:.4g}, alpha={self.alpha:.4g}, "
                f"beta={self.beta:.4g} (N counted as {self.params})")


PUBLISHED = {
    "chinchilla": Law(1.69, 406.4, 410.7, 0.34, 0.28, "Chinchilla (Hoffmann et al. 2022, approach 3)"),
    "besiroglu": Law(1.8172, 482.01, 2085.43, 0.3478, 0.3658, "Besiroglu et al. 2024 (refit of Chinchilla's data)"),
}


def load_law(name_or_path: str) -> Law:
    """A published law by name, or the law.json that `codelm scaling fit` writes."""
    if name_or_path in PUBLISHED:
        return PUBLISHED[name_or_path]
    path = Path(name_or_path)
    if not path.is_file():
        raise UserError(f"--law {name_or_path}: neither {' nor '.join(PUBLISHED)} nor a file")
    try:
        return Law(**json.loads(path.read_text()))
    except (ValueError, TypeError) as e:
        raise UserError(f"--law {path}: not a law file as `codelm scaling fit` writes ({e})") from None
