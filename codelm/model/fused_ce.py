"""LM head + cross-entropy in chunks, with the gradients computed during the forward pass.

The plain path materialises (tokens x vocab) logits, copies them to fp32, runs
log-softmax forward and backward over them, and keeps them alive in between.
With a small model and an 8k vocabulary that memory traffic costs more than
the transformer layers. Here each chunk of rows goes through matmul ->
logsumexp -> (softmax - one-hot) -> two matmuls while it is still in cache,
and only d(hidden) and d(weight) are kept for backward. Same loss and
gradients (the idea of Liger Kernel's fused linear cross-entropy). Without
autograd (evaluation) only the loss is computed, still without the full logits.
"""

import torch

IGNORE = -100


class _ChunkedLinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, compute_dtype, chunk, with_grads):
        with torch.autocast(hidden.device.type, enabled=False):
            h = hidden.to(compute_dtype)
            w = weight.to(compute_dtype)
            n_valid = (targets != IGNORE).sum().clamp(min=1)
            if with_grads:
                grad_hidden = torch.empty_like(hidden)
                grad_weight = torch.zeros_like(weight, dtype=torch.float32)
            loss = torch.zeros((), dtype=torch.float32, device=hidden.device)
            for start in range(0, h.shape[0], chunk):
                hc, tc = h[start : start + chunk], targets[start : start + chunk]
                valid = tc != IGNORE
                safe = tc.clamp(min=0)
                logits = (hc @ w.T).float()
                lse = torch.logsumexp(logits, dim=-1)
                loss += ((lse - logits.gather(1, safe[:, None]).squeeze(1)) * valid).sum()
                if not with_grads:
                    continue
                probs = logits.sub_(lse[:, None]).exp_()  # softmax, in place
                probs[torch.arange(len(tc), device=tc.device), safe] -= 1.0
                dlogits = probs.mul_((valid / n_valid)[:, None]).to(compute_dtype)
                grad_hidden[start : start + chunk] = dlogits @ w
                grad_weight += (dlogits.T @ hc).float()
        if with_grads:
            ctx.save_for_backward(grad_hidden, grad_weight.to(weight.dtype))
        return loss / n_valid

    @staticmethod
    def backward(ctx, grad_loss):
        grad_hidden, grad_weight = ctx.saved_tensors
        return grad_hidden * grad_loss, grad_weight * grad_loss, None, None, None, None


@torch.compiler.disable  # a loop of large ops: nothing for the compiler to fuse, so the graph breaks here
def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk: int = 256):
    """Mean cross-entropy of softmax(hidden @ weight.T) against targets (IGNORE excluded).

    hidden (N, d), weight (V, d), targets (N,). Under autocast the matmuls run in the autocast dtype.
    """
    device = hidden.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else hidden.dtype
    with_grads = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    return _ChunkedLinearCrossEntropy.apply(hidden, weight, targets, dtype, chunk, with_grads)
