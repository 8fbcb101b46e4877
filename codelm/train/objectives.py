"""What recipes minimise: each objective is a few lines on the loop's Objective protocol (loop.py)."""

import torch

from codelm.data.loader import IGNORE, Batch


class NextToken:
    """Next-token cross-entropy over a batch's targets, IGNORE excluded. Pretraining's objective, and SFT's:
    an SFT batch marks every token that is not the assistant's as IGNORE (data/sft.py)."""

    def units(self, batch: Batch) -> int:
        return int((batch.targets != IGNORE).sum())

    def __call__(self, model, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        mean = model.loss(batch.inputs, batch.targets, batch.doc_ids)
        return mean * (batch.targets != IGNORE).sum(), {}
