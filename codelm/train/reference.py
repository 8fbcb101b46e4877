"""The reference policy that DPO and RL's KL term measure the policy against, and per-token log-probs."""

import copy

import torch

from codelm import checkpoint as ckpt
from codelm.errors import UserError
from codelm.model.llama import Transformer
from codelm.model.lora import adapters_disabled, lora_layers
from codelm.tokenizer import Tokenizer


def token_logprobs(model: torch.nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(B, T) log-probability of each target token under the model (fp32 log-softmax)."""
    logits = model(inputs)
    return torch.log_softmax(logits.float(), dim=-1).gather(-1, targets.clamp(min=0)[..., None])[..., 0]


class Reference:
    """The reference policy of a KL term or of DPO: a LoRA policy's base with its adapters off (no copy), else a
    frozen copy of the starting weights or another checkpoint that shares the tokenizer."""

    def __init__(self, policy: Transformer, tok: Tokenizer, checkpoint: str = "", lora: bool = False):
        self.model = None
        if checkpoint:
            self.model, ref_tok, _ = ckpt.load_model(checkpoint)
            if ref_tok.hf.get_vocab() != tok.hf.get_vocab():
                raise UserError(f"the reference {checkpoint} has another tokenizer than the policy: log-prob "
                                "ratios compare the same token ids")
        elif not lora:  # with LoRA the base is the policy with adapters disabled: nothing to copy
            self.model = copy.deepcopy(policy)
        if self.model is not None:
            self.model.eval().requires_grad_(False)

    @torch.no_grad()
    def logprobs(self, policy: torch.nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if self.model is not None:
            return token_logprobs(self.model.to(inputs.device), inputs, targets)
        if not lora_layers(policy):
            raise UserError("the reference is the policy's base, but the policy has no LoRA adapters")
        with adapters_disabled(policy):
            return token_logprobs(policy, inputs, targets)
