"""What recipes minimise: each objective is a few lines on the loop's Objective protocol (loop.py)."""

import math

import torch
import torch.nn as nn

from codelm.data.loader import IGNORE, Batch


def learned_targets(batch: Batch) -> torch.Tensor:
    """Where a batch has a target to learn (IGNORE marks padding, prompts, other roles): what token losses sum over."""
    return batch.targets != IGNORE


class NextToken:
    """Next-token cross-entropy over a batch's targets, IGNORE excluded. Pretraining's objective, and SFT's:
    an SFT batch marks every token that is not the assistant's as IGNORE (data/sft.py)."""

    def units(self, batch: Batch) -> int:
        return int(learned_targets(batch).sum())

    def __call__(self, model, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        mean = model.loss(batch.inputs, batch.targets, batch.doc_ids)
        return mean * learned_targets(batch).sum(), {}


def generalized_jsd(student_logits: torch.Tensor, teacher_logits: torch.Tensor, beta: float,
                    temperature: float = 1.0) -> torch.Tensor:
    """Per-position divergence between teacher and student next-token distributions (last dim), as GKD
    (Agarwal et al. 2024) defines it: beta = 0 is forward KL(teacher || student) (mode covering), beta = 1
    reverse KL(student || teacher) (mode seeking), and between them the generalized Jensen-Shannon divergence
    beta KL(teacher || m) + (1 - beta) KL(student || m) with m = beta teacher + (1 - beta) student, which
    is at most ln 2 at beta = 0.5. Both sets of logits are divided by the temperature first."""
    s = torch.log_softmax(student_logits.float() / temperature, dim=-1)
    t = torch.log_softmax(teacher_logits.float() / temperature, dim=-1)

    def kl(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:  # KL(p || q) from log-probabilities
        return (p.exp() * (p - q)).sum(-1)

    if beta == 0:
        return kl(t, s)
    if beta == 1:
        return kl(s, t)
    m = torch.logsumexp(torch.stack([t + math.log(beta), s + math.log(1 - beta)]), dim=0)
    return beta * kl(t, m) + (1 - beta) * kl(s, m)


class Distill:
    """Token-level distillation: the student matches a frozen teacher's next-token distribution at every
    target position the batch keeps (IGNORE excluded), by generalized_jsd. The teacher must share the
    student's tokenizer (the recipe checks): the distributions are over the same ids."""

    def __init__(self, teacher: nn.Module, beta: float, temperature: float):
        self.teacher, self.beta, self.temperature = teacher.eval().requires_grad_(False), beta, temperature

    units = NextToken.units  # the same target tokens

    def __call__(self, model, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        keep = learned_targets(batch)
        with torch.no_grad():
            teacher_logits = self.teacher(batch.inputs, batch.doc_ids)[keep]
        student_logits = model(batch.inputs, batch.doc_ids)[keep]
        divergence = generalized_jsd(student_logits, teacher_logits, self.beta, self.temperature).sum()
        with torch.no_grad():  # how the student does on the data itself, for comparison with SFT runs
            nll = torch.nn.functional.cross_entropy(student_logits.float(), batch.targets[keep], reduction="sum")
        return divergence, {"nll": nll}
