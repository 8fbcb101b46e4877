"""LoRA (Hu et al. 2021): frozen base weights plus a trainable low-rank update, computed as PEFT computes it.

A targeted `nn.Linear` becomes a `LoraLinear` that keeps the base weight under its
own key (`...q_proj.weight`) and adds `...q_proj.lora_A.weight` (r, in) and
`...q_proj.lora_B.weight` (out, r):

    y = x W^T + scale * B(A(dropout(x))),   scale = alpha / r   (alpha / sqrt(r) with rsLoRA)

A starts Kaiming-uniform (a=sqrt(5), nn.Linear's and PEFT's init) and B at zero,
so a fresh adapter leaves the model's outputs exactly unchanged. The names match
PEFT's once its adapter name is dropped, which is what codelm.checkpoint.adapter relies on.
"""

import contextlib
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from codelm.config import LoraConfig
from codelm.errors import UserError
from codelm.model.llama import Transformer


@dataclass(frozen=True)
class LoraSpec:
    """What an adapter is: rank, alpha, target module names (PEFT's matching: a name or a dotted suffix)."""

    r: int
    alpha: float
    targets: tuple[str, ...]
    rslora: bool = False
    dropout: float = 0.0

    def __post_init__(self):
        object.__setattr__(self, "targets", tuple(sorted(set(self.targets))))
        checks = [
            (self.r >= 1, f"LoRA rank r must be >= 1, got {self.r}"),
            (self.alpha > 0, f"LoRA alpha must be > 0, got {self.alpha}"),
            (0 <= self.dropout < 1, f"LoRA dropout must be in [0, 1), got {self.dropout}"),
            (bool(self.targets) and all(self.targets), f"LoRA targets must be non-empty names, got {self.targets}"),
            # the loss reads lm_head.weight directly (fused_ce.py), so an adapter there would train but never count
            ("lm_head" not in self.targets, "LoRA cannot target lm_head: the fused loss reads its weight directly"),
        ]
        for ok, message in checks:
            if not ok:
                raise UserError(message)

    @classmethod
    def from_config(cls, cfg: LoraConfig) -> "LoraSpec":
        return cls(cfg.r, cfg.alpha, tuple(t.strip() for t in cfg.targets.split(",")), cfg.rslora, cfg.dropout)

    @property
    def scale(self) -> float:
        return self.alpha / (math.sqrt(self.r) if self.rslora else self.r)


class LoraLinear(nn.Linear):
    """A bias-free Linear with a low-rank adapter. A subclass, so code that reads `.weight` keeps working;
    `fused_linear` runs it on its own (it fuses only exact nn.Linear layers)."""

    def __init__(self, base: nn.Linear, spec: LoraSpec):
        super().__init__(base.in_features, base.out_features, bias=False, device="meta")
        self.weight = base.weight
        self.spec = spec
        kind = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.lora_A = nn.Linear(base.in_features, spec.r, bias=False, **kind)
        self.lora_B = nn.Linear(spec.r, base.out_features, bias=False, **kind)
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)
        self.dropout = nn.Dropout(spec.dropout) if spec.dropout else nn.Identity()
        self.merged = False
        self.disabled = False  # adapters_disabled: the base layer's output, for a reference model
        self.train(base.training)

    def forward(self, x):
        y = F.linear(x, self.weight)
        if self.merged or self.disabled:
            return y
        return y + self.lora_B(self.lora_A(self.dropout(x))) * self.spec.scale

    @torch.no_grad()
    def delta(self) -> torch.Tensor:
        """scale * B @ A in fp32: a bf16 product would round before it is added to the weight."""
        return (self.lora_B.weight.float() @ self.lora_A.weight.float()) * self.spec.scale


def lora_layers(model: nn.Module) -> list[tuple[str, LoraLinear]]:
    return [(name, m) for name, m in model.named_modules() if isinstance(m, LoraLinear)]


@contextlib.contextmanager
def adapters_disabled(model: nn.Module):
    """The base model's outputs from a LoRA model, without a second copy of its weights: the reference of DPO
    and of RL's KL term when the policy is the base plus adapters (as PEFT's disable_adapter)."""
    layers = [m for _, m in lora_layers(model)]
    if any(m.merged for m in layers):
        raise ValueError("adapters_disabled needs unmerged adapters (the merged weights hold them)")
    for m in layers:
        m.disabled = True
    try:
        yield
    finally:
        for m in layers:
            m.disabled = False


def lora_spec(model: nn.Module) -> LoraSpec | None:
    """The spec the model's adapters were applied with; None for a model without LoRA."""
    return next((m.spec for _, m in lora_layers(model)), None)


def lora_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The adapters' parameters: what the optimizer trains."""
    return [p for _, m in lora_layers(model) for p in (m.lora_A.weight, m.lora_B.weight)]


def _matches(name: str, target: str) -> bool:
    return name == target or name.endswith("." + target)


def apply_lora(model: Transformer, spec: LoraSpec) -> list[str]:
    """Freeze every parameter of the model and put an adapter on each Linear layer the spec targets.

    Returns the adapted module names. A target that matches no Linear layer is an error naming it."""
    if lora_layers(model):
        raise UserError("the model already has LoRA adapters: merge them first (codelm export hf --merge-lora)")
    chosen = [(name, m) for name, m in model.named_modules() if any(_matches(name, t) for t in spec.targets)]
    not_linear = [name for name, m in chosen if type(m) is not nn.Linear or m.bias is not None]
    if not_linear:
        raise UserError(f"LoRA targets must be bias-free Linear layers; not one: {not_linear[:3]}")
    unmatched = [t for t in spec.targets if not any(_matches(name, t) for name, _ in chosen)]
    if unmatched:
        names = sorted({name.rpartition(".")[2] for name, m in model.named_modules() if type(m) is nn.Linear})
        raise UserError(f"LoRA target(s) {unmatched} match no layer of the model (Linear layers: {', '.join(names)})")
    for p in model.parameters():
        p.requires_grad_(False)
    for name, linear in chosen:
        parent, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent), attr, LoraLinear(linear, spec))
    return [name for name, _ in chosen]


@torch.no_grad()
def merge_lora(model: nn.Module):
    """Fold scale * B @ A into every base weight (in fp32, cast once), as PEFT's safe_merge does:
    if any merged weight would not be finite, nothing is changed and the error names the layers."""
    pending = [(name, m) for name, m in lora_layers(model) if not m.merged]
    broken = [name for name, m in pending
              if not torch.isfinite((m.weight.float() + m.delta()).to(m.weight.dtype)).all()]
    if broken:
        raise UserError(f"merging LoRA would give non-finite weights in {broken[:3]}: the adapter is broken")
    for _, m in pending:
        m.weight.copy_(m.weight.float() + m.delta())
        m.merged = True


@torch.no_grad()
def unmerge_lora(model: nn.Module):
    """Subtract the adapters back out of merged weights (exact in fp32 up to rounding; bf16 rounds twice)."""
    for _, m in lora_layers(model):
        if m.merged:
            m.weight.copy_(m.weight.float() - m.delta())
            m.merged = False


def _unload(model: nn.Module):
    for name, m in lora_layers(model):
        parent, _, attr = name.rpartition(".")
        linear = nn.Linear(m.in_features, m.out_features, bias=False, device="meta")
        linear.weight = m.weight
        setattr(model.get_submodule(parent), attr, linear.train(m.training))


def merge_and_unload(model: nn.Module) -> nn.Module:
    """A plain model whose weights include the adapters (what an export of merged weights writes)."""
    merge_lora(model)
    _unload(model)
    return model


def unload_lora(model: nn.Module) -> nn.Module:
    """The plain base model: adapters removed, merged ones subtracted first."""
    unmerge_lora(model)
    _unload(model)
    return model
