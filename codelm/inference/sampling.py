"""Plain autoregressive sampling: greedy or temperature with optional top-k.

Each step re-runs the model on the whole (cropped) context, which is simple
and exact. That is enough for the short samples a training run reports; the
KV-cache engine with the full set of decoding strategies is a separate module.
"""

import torch

from codelm.data.fim import fim_prompt
from codelm.model.llama import Transformer
from codelm.tokenizer import Tokenizer


@torch.no_grad()
def generate(
    model: Transformer,
    prompt_ids: list[int],
    max_new_tokens: int = 128,
    temperature: float = 0.0,
    top_k: int = 0,
    stop_ids: tuple[int, ...] = (),
    seed: int = 0,
) -> list[int]:
    """New token ids after the prompt; temperature 0 is greedy. Stops after a stop id (not returned)."""
    device = next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed)
    ids = list(prompt_ids)
    out: list[int] = []
    window = model.config.max_seq_len
    for _ in range(max_new_tokens):
        context = torch.tensor([ids[-window:]], device=device)
        logits = model(context)[0, -1].float()
        if temperature <= 0:
            next_id = int(logits.argmax())
        else:
            logits = logits / temperature
            if top_k > 0:
                kth = torch.topk(logits, min(top_k, logits.numel())).values[-1]
                logits[logits < kth] = float("-inf")
            next_id = int(torch.multinomial(torch.softmax(logits, -1), 1, generator=gen))
        if next_id in stop_ids:
            break
        ids.append(next_id)
        out.append(next_id)
    return out


def complete(model: Transformer, tok: Tokenizer, prompt: str, **kwargs) -> str:
    """Continue `prompt` as the start of a document."""
    ids = generate(model, [tok.eot_id, *tok.encode(prompt)], stop_ids=(tok.eot_id,), **kwargs)
    return tok.decode(ids)


def fill_in_middle(model: Transformer, tok: Tokenizer, prefix: str, suffix: str, **kwargs) -> str:
    """The middle between prefix and suffix, from the PSM prompt; ends at <|endoftext|>."""
    ids = generate(model, fim_prompt(prefix, suffix, tok), stop_ids=(tok.eot_id,), **kwargs)
    return tok.decode(ids)
