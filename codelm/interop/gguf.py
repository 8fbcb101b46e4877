"""GGUF (llama.cpp) files in: weights dequantized to fp32, and the tokenizer from the metadata.

The `gguf` package reads the file and dequantizes every type it knows (F32, F16,
BF16, Q8_0, Q4_0, Q4_1, the K-quants, ...). Two things differ from an HF Llama:
tensor names (blk.N.attn_q.weight, ...), and the rows of the Q and K projections,
which llama.cpp's converter permutes from HF's rotate-half RoPE layout to the
interleaved one; the inverse permutation is applied here. The tokenizer is
rebuilt as an HF `tokenizers` byte-level BPE from the stored vocabulary, merges
and token types, with the pre-tokenizer that `tokenizer.ggml.pre` names.
"""

from pathlib import Path

import numpy as np
import torch
from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers
from tokenizers import Tokenizer as HFTokenizer

from codelm.checkpoint import (
    load_state,
    model_config_from_hf,
    save_model,
    token_id_list,
)
from codelm.config import ModelConfig
from codelm.errors import UserError
from codelm.interop.hf import generation_config
from codelm.model.llama import Transformer
from codelm.tokenizer import LLAMA3_SPLIT, Tokenizer

LAYER_NAMES = {
    "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
TOP_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
HF_KEYS = {  # llama.* metadata -> HF config.json key, so codelm.checkpoint.model_config_from_hf reads it
    "embedding_length": "hidden_size", "block_count": "num_hidden_layers", "feed_forward_length": "intermediate_size",
    "attention.head_count": "num_attention_heads", "attention.head_count_kv": "num_key_value_heads",
    "attention.key_length": "head_dim", "context_length": "max_position_embeddings", "rope.freq_base": "rope_theta",
    "attention.layer_norm_rms_epsilon": "rms_norm_eps",
}

CONTROL, USER_DEFINED = 3, 4  # llama.cpp token types that are special tokens


def hf_name(gguf_name: str) -> str:
    parts = gguf_name.split(".")
    if parts[0] == "blk" and parts[2] in LAYER_NAMES:
        return f"model.layers.{parts[1]}.{LAYER_NAMES[parts[2]]}.{parts[3]}"
    if parts[0] in TOP_NAMES:
        return f"{TOP_NAMES[parts[0]]}.{parts[1]}"
    raise UserError(f"unexpected tensor {gguf_name!r} in a llama GGUF file")


def unpermute_rope_rows(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's Q/K row permutation (interleaved RoPE pairs -> HF's two halves, per head)."""
    rows = w.shape[0]
    return w.reshape(n_heads, rows // n_heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def pre_tokenizer(name: str):
    """The split rule the vocabulary was trained with; llama.cpp's names (`tokenizer.ggml.pre`)."""
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)  # GPT-2's regex
    if name == "smollm":  # GPT-2 with each digit on its own, as SmolLM's tokenizer.json has it
        return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    if name in ("llama3", "llama-v3", "llama-bpe", "smaug-bpe"):
        return pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated"),
                                        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    return byte_level


def tokenizer_from_metadata(fields: dict) -> HFTokenizer:
    kind = fields.get("tokenizer.ggml.model")
    if kind != "gpt2":
        raise UserError(f"GGUF tokenizer model {kind!r} is not supported (byte-level BPE, 'gpt2', is)")
    tokens = fields["tokenizer.ggml.tokens"]
    merges = [tuple(m.split(" ", 1)) for m in fields["tokenizer.ggml.merges"]]
    hf = HFTokenizer(models.BPE({t: i for i, t in enumerate(tokens)}, merges, ignore_merges=False))
    hf.pre_tokenizer = pre_tokenizer(fields.get("tokenizer.ggml.pre", "default"))
    hf.decoder = decoders.ByteLevel()
    types = fields.get("tokenizer.ggml.token_type", [1] * len(tokens))
    hf.add_special_tokens([AddedToken(t, special=True, normalized=False)
                           for t, kind in zip(tokens, types) if kind in (CONTROL, USER_DEFINED)])
    return hf


def read_gguf(path: str | Path) -> tuple[ModelConfig, dict[str, torch.Tensor], dict]:
    """(model config, fp32 state dict with HF names, metadata fields)."""
    from gguf import GGUFReader
    from gguf.quants import dequantize

    path = Path(path)
    if not path.is_file():
        raise UserError(f"GGUF file not found: {path}")
    try:
        reader = GGUFReader(path)
    except Exception as e:  # a truncated or foreign file
        raise UserError(f"cannot read {path} as GGUF: {e}") from None
    fields = {name: field.contents() for name, field in reader.fields.items()}
    arch = fields.get("general.architecture")
    if arch != "llama":
        raise UserError(f"only llama-architecture GGUF files can be imported; this one is {arch!r}")
    if fields.get("llama.rope.scaling.type", "none") not in ("none", "linear") or "llama.rope.scaling.factor" in fields:
        raise UserError("GGUF uses RoPE scaling, which codelm's model does not implement")
    hf = {theirs: fields[f"llama.{ours}"] for ours, theirs in HF_KEYS.items() if f"llama.{ours}" in fields}
    cfg = model_config_from_hf(hf | {"model_type": "llama", "vocab_size": len(fields["tokenizer.ggml.tokens"]),
                                     "tie_word_embeddings": not any(t.name == "output.weight" for t in reader.tensors)})
    if fields.get("llama.rope.dimension_count", cfg.head_dim) != cfg.head_dim:
        raise UserError("GGUF rotates only part of each head (rope.dimension_count < head size); not supported")
    weights = {}
    for t in reader.tensors:
        w = dequantize(t.data, t.tensor_type).astype(np.float32).reshape([int(d) for d in reversed(t.shape)])
        if t.name.endswith("attn_q.weight"):
            w = unpermute_rope_rows(w, cfg.n_heads)
        elif t.name.endswith("attn_k.weight"):
            w = unpermute_rope_rows(w, cfg.n_kv_heads)
        weights[hf_name(t.name)] = torch.from_numpy(np.ascontiguousarray(w))
    return cfg, weights, fields


def import_gguf(path: str | Path, out: str | Path) -> Path:
    """A GGUF file -> a codelm checkpoint (fp32 weights, tokenizer.json from the metadata)."""
    cfg, weights, fields = read_gguf(path)
    model = Transformer(cfg)
    load_state(model, weights, f"GGUF file {path}")
    tok = Tokenizer(tokenizer_from_metadata(fields), required=())
    bos, eos = fields.get("tokenizer.ggml.bos_token_id"), fields.get("tokenizer.ggml.eos_token_id")
    prefix = [bos] if fields.get("tokenizer.ggml.add_bos_token") and bos is not None else []
    extra = generation_config(prefix, token_id_list(eos), bos)
    template = fields.get("tokenizer.chat_template")
    return save_model(out, model, tok, extra, {"chat_template": template} if template else None)
