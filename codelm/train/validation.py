"""Held-out loss and bits per byte: training's periodic validation and `codelm eval`'s bpb task measure with this.

Loss per token depends on the tokenizer; bits per byte does not, so it is how
runs with different tokenizers (or none) are compared:

    bpb = sum of next-token losses in nats / (ln 2 * UTF-8 bytes of those tokens)

Special tokens (<|endoftext|>, FIM sentinels) have no bytes and are left out
of both sums, as in nanochat. The loss is the plain mean over all targets.
"""

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from codelm.data.loader import IGNORE, Batch, PackedLoader
from codelm.model.llama import Transformer
from codelm.tokenizer import Tokenizer


@dataclass
class HeldOut:
    loss: float  # nats per token, over every target
    bpb: float  # bits per UTF-8 byte, over text tokens
    tokens: int
    bytes: int


@torch.no_grad()
def held_out_loss(model: Transformer, batches: Iterable[Batch], token_bytes: torch.Tensor, autocast,
                  device) -> HeldOut:
    """Mean loss, bits per byte and counts over a finite stream of batches."""
    was_training = model.training
    model.eval()
    nats = torch.zeros((), dtype=torch.float64)
    text_nats = torch.zeros((), dtype=torch.float64)
    n_tokens = 0
    n_bytes = 0
    token_bytes = token_bytes.to(device)
    for batch in batches:
        batch = batch.to(device)
        with autocast:
            logits = model(batch.inputs, batch.doc_ids)
        losses = F.cross_entropy(
            logits.float().view(-1, logits.shape[-1]), batch.targets.view(-1), ignore_index=IGNORE, reduction="none"
        )
        valid = batch.targets.view(-1) != IGNORE
        nbytes = token_bytes[batch.targets.view(-1).clamp(min=0)] * valid
        nats += losses.sum().double().cpu()
        text_nats += (losses * (nbytes > 0)).sum().double().cpu()
        n_tokens += int(valid.sum())
        n_bytes += int(nbytes.sum())
    model.train(was_training)
    return HeldOut(loss=float(nats / max(n_tokens, 1)), bpb=float(text_nats / (math.log(2) * max(n_bytes, 1))),
                   tokens=n_tokens, bytes=n_bytes)


def held_out_loader(docs, tok: Tokenizer, seq_len: int, batch_rows: int) -> PackedLoader:
    """One ordered pass over docs, no FIM: every token is predicted exactly once."""
    return PackedLoader(docs, seq_len, batch_rows, tok.eot_id, shuffle=False, passes=1, streams=1)


def token_bytes_tensor(tok: Tokenizer) -> torch.Tensor:
    return torch.tensor(tok.token_bytes(), dtype=torch.int64)
