"""Held-out loss and bits per byte: training's periodic validation and `codelm eval`'s bpb task measure with this.

Loss per token depends on the tokenizer; bits per byte does not, so it is how
runs with different tokenizers (or none) are compared:

    bpb = sum of next-token losses in nats / (ln 2 * UTF-8 bytes of those tokens)

Special tokens (<|endoftext|>, FIM sentinels) have no bytes and are left out
of both sums, as in nanochat. The loss is the plain mean over all targets.
Under torchrun each process measures every world-th batch and the sums are
added up, so validation takes 1/world of the time it takes one process.
"""

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
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


def process_share(batches: Iterable[Batch], rank: int, world: int) -> Iterator[tuple[Batch, bool]]:
    """(batch, counted): this process's batches (every world-th), then, where it got one fewer than the first
    processes, the last batch again, not counted, so that every process runs as many forwards (under FSDP each
    forward gathers weights from all of them)."""
    n, last = 0, None
    for n, batch in enumerate(batches, start=1):
        if (n - 1) % world == rank:
            yield batch, True
        last = batch
    if n % world and rank >= n % world:
        yield last, False


@torch.no_grad()
def held_out_loss(model: Transformer, batches: Iterable[Batch], token_bytes: torch.Tensor, autocast,
                  device, rank: int = 0, world: int = 1) -> HeldOut:
    """Mean loss, bits per byte and counts over a finite stream of batches; with world > 1, called by every
    process (rank) of a torchrun launch, each taking its share, all returning the totals."""
    was_training = model.training
    model.eval()
    sums = torch.zeros(4, dtype=torch.float64)  # nats, nats of text tokens, tokens, bytes
    token_bytes = token_bytes.to(device)
    for batch, counted in process_share(batches, rank, world):
        batch = batch.to(device)
        with autocast:
            logits = model(batch.inputs, batch.doc_ids)
        if not counted:
            continue
        losses = F.cross_entropy(
            logits.float().view(-1, logits.shape[-1]), batch.targets.view(-1), ignore_index=IGNORE, reduction="none"
        )
        valid = batch.targets.view(-1) != IGNORE
        nbytes = token_bytes[batch.targets.view(-1).clamp(min=0)] * valid
        sums += torch.stack([losses.sum().double(), (losses * (nbytes > 0)).sum().double(),
                             valid.sum().double(), nbytes.sum().double()]).cpu()
    model.train(was_training)
    if world > 1:
        sums = sums.to(device)
        dist.all_reduce(sums)
        sums = sums.cpu()
    nats, text_nats, n_tokens, n_bytes = sums.tolist()
    return HeldOut(loss=nats / max(n_tokens, 1), bpb=text_nats / (math.log(2) * max(n_bytes, 1)),
                   tokens=int(n_tokens), bytes=int(n_bytes))


def held_out_loader(docs, tok: Tokenizer, seq_len: int, batch_rows: int) -> PackedLoader:
    """One ordered pass over docs, no FIM: every token is predicted exactly once."""
    return PackedLoader(docs, seq_len, batch_rows, tok.eot_id, shuffle=False, passes=1, streams=1)


def token_bytes_tensor(tok: Tokenizer) -> torch.Tensor:
    return torch.tensor(tok.token_bytes(), dtype=torch.int64)
