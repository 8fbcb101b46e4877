"""Muon for the hidden weight matrices, AdamW for everything else, as one optimizer.

Muon (Keller Jordan, 2024) replaces each matrix's momentum update by its nearest
semi-orthogonal matrix (a few Newton-Schulz iterations), so every direction of
the update moves at the same rate instead of a few dominant ones. At small scale
it reaches a given loss in noticeably fewer tokens than AdamW, which is what a
fixed CPU budget needs. Embeddings, the LM head, norms and vectors keep AdamW:
they are lookups or classifiers, not linear maps between hidden states.

One optimizer object (not two) keeps a single state_dict, so checkpoints and
exact resume work as for AdamW. A group with `use_muon=True` takes the Muon
update; the others take torch's AdamW step on the same group. Under FSDP each
process holds a slice of every matrix; the orthogonalization needs the whole
one, so each process gathers it, orthogonalizes it and keeps its own slice.
"""

import torch
import torch.nn.functional as F
from torch.distributed.tensor import DTensor, distribute_tensor
from torch.optim.adamw import adamw

NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)  # quintic iteration tuned to push singular values near 1 fast


def orthogonalize(g: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """Approximately U V^T of g = U S V^T by a quintic Newton-Schulz iteration (fp32 on CPU, bf16 on GPU)."""
    a, b, c = NS_COEFFICIENTS
    x = g.to(torch.bfloat16 if g.is_cuda else torch.float32)
    tall = x.shape[0] > x.shape[1]
    if tall:
        x = x.T
    x = x / (x.norm() + 1e-7)  # singular values <= 1, where the iteration converges
    for _ in range(steps):
        gram = F.linear(x, x)  # x @ x.T; F.linear's kernel is several times faster than matmul with a transpose on CPU
        x = a * x + (b * gram + c * F.linear(gram, gram)) @ x  # the Gram matrix is symmetric
    return (x.T if tall else x).to(g.dtype)


def orthogonalize_whole(g: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """orthogonalize of the whole matrix, also when g is a shard of it (FSDP's DTensor): every process gathers
    the matrix, computes the same result, and keeps its own slice (no communication back)."""
    if not isinstance(g, DTensor):
        return orthogonalize(g, steps)
    return distribute_tensor(orthogonalize(g.full_tensor(), steps), g.device_mesh, g.placements, src_data_rank=None)


class MuonAdamW(torch.optim.Optimizer):
    """Groups with use_muon=True: momentum -> orthogonalize -> step scaled by sqrt(max(1, rows/cols)).

    Other groups: AdamW with their own betas/eps. `weight_decay` is decoupled in both."""

    def __init__(self, groups: list[dict], lr: float, betas=(0.9, 0.95), eps: float = 1e-8, momentum: float = 0.95,
                 ns_steps: int = 5):
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=0.0, momentum=momentum, ns_steps=ns_steps,
                        use_muon=False)
        super().__init__(groups, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            if group["use_muon"]:
                self._muon_step(group)
            else:
                self._adamw_step(group)

    def _muon_step(self, group: dict):
        for p in group["params"]:
            if p.grad is None:
                continue
            state = self.state[p]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(p)
            buf = state["momentum_buffer"]
            buf.lerp_(p.grad, 1 - group["momentum"])
            update = orthogonalize_whole(p.grad.lerp(buf, group["momentum"]), group["ns_steps"])  # Nesterov
            p.mul_(1 - group["lr"] * group["weight_decay"])
            p.add_(update, alpha=-group["lr"] * max(1.0, p.shape[0] / p.shape[1]) ** 0.5)

    def _adamw_step(self, group: dict):
        params = [p for p in group["params"] if p.grad is not None]
        states = [self.state[p] for p in params]
        for p, state in zip(params, states):
            if not state:
                state["step"] = torch.zeros((), dtype=torch.float32)
                state["exp_avg"] = torch.zeros_like(p)
                state["exp_avg_sq"] = torch.zeros_like(p)
        if not params:
            return
        beta1, beta2 = group["betas"]
        adamw(
            params, [p.grad for p in params], [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states],
            [], [s["step"] for s in states], amsgrad=False, beta1=beta1, beta2=beta2, lr=group["lr"],
            weight_decay=group["weight_decay"], eps=group["eps"], maximize=False, foreach=True,
        )
