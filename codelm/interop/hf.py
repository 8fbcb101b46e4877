"""Hugging Face Llama and Qwen3 folders in and out.

codelm's parameter names are HF's and its RoPE is HF's rotate-half layout, so
weights move across unchanged; only config.json (codelm.checkpoint.hf_config:
Qwen3 for QK-norm models, Llama otherwise) and the tokenizer files need
translating. Export writes a folder that `AutoModelForCausalLM.from_pretrained`
and `AutoTokenizer.from_pretrained` load with no conversion code: the document
prefix codelm prompts with (its models start every document with
<|endoftext|>) becomes the tokenizer's post-processor, so HF's default
`tokenizer(text)` produces the same ids codelm feeds its model.
"""

import json
from pathlib import Path

import safetensors.torch
import torch
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import processors

from codelm.checkpoint import (
    adapter_base,
    load_model,
    load_state,
    model_config_from_hf,
    save_model,
    token_id_list,
    write_model_files,
)
from codelm.checkpoint.adapter import save_adapter
from codelm.errors import UserError
from codelm.io import atomic_directory, atomic_write_json
from codelm.model.llama import Transformer
from codelm.model.lora import lora_spec, merge_and_unload, unload_lora
from codelm.tokenizer import Tokenizer


def _read_safetensors(src: Path) -> dict[str, torch.Tensor]:
    index = src / "model.safetensors.index.json"
    files = (
        sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.is_file() else ["model.safetensors"]
    )
    weights = {}
    for name in files:
        if not (src / name).is_file():
            raise UserError(f"{src / name} not found (only safetensors weights can be imported)")
        weights.update(safetensors.torch.load_file(src / name))
    return weights


def generation_config(prefix_ids: list[int], eos_ids: list[int], bos_id: int | None) -> dict:
    """config.json keys for where documents start and which tokens end generation."""
    return {"codelm_prefix_ids": prefix_ids, **hf_special_ids(eos_ids, bos_id)}


def hf_special_ids(eos_ids: list[int], bos_id: int | None) -> dict:
    """bos/eos as HF writes them in config.json and generation_config.json (one eos id as a bare int)."""
    return {"bos_token_id": bos_id, "eos_token_id": eos_ids[0] if len(eos_ids) == 1 else eos_ids}


def import_hf(src: str | Path, out: str | Path) -> Path:
    """An HF Llama or Qwen3 folder (config.json, safetensors, tokenizer.json) -> a codelm checkpoint."""
    src = Path(src)
    for name in ("config.json", "tokenizer.json"):
        if not (src / name).is_file():
            raise UserError(
                f"{src / name} not found: an HF model folder needs config.json, tokenizer.json and safetensors weights"
            )
    config = json.loads((src / "config.json").read_text())
    model = Transformer(model_config_from_hf(config))
    weights = {k: v for k, v in _read_safetensors(src).items() if not k.endswith("rotary_emb.inv_freq")}
    load_state(model, weights, f"the weights in {src}")
    tok = Tokenizer.load(src / "tokenizer.json", required=())
    tok_config_path = src / "tokenizer_config.json"
    tok_config = json.loads(tok_config_path.read_text()) if tok_config_path.is_file() else None
    bos = config.get("bos_token_id")
    prefix = [bos] if (tok_config or {}).get("add_bos_token") and bos is not None else []
    extra = generation_config(prefix, token_id_list(config.get("eos_token_id")), bos)
    return save_model(out, model, tok, extra, tok_config)


def export_hf(checkpoint: str | Path, out: str | Path, merge_lora: bool = False) -> Path:
    """A codelm checkpoint -> a folder transformers loads (LlamaForCausalLM or Qwen3ForCausalLM) + a fast tokenizer.

    A LoRA adapter checkpoint exports with its adapters merged into the weights (merge_lora), or as its
    base model plus the adapters in PEFT's format in out/adapter/, whose base_model_name_or_path is out."""
    model, tok, ckpt = load_model(checkpoint)
    lora = lora_spec(model) is not None
    if merge_lora and not lora:
        raise UserError(f"--merge-lora: {ckpt} holds no LoRA adapter")
    source = adapter_base(ckpt) if lora else ckpt  # config.json and tokenizer_config.json are the base's
    config = json.loads((source / "config.json").read_text())
    eos_ids = sorted(tok.stop_ids)
    bos = config.get("bos_token_id", tok.prefix_ids[0] if tok.prefix_ids else None)
    hf = HFTokenizer.from_str(tok.hf.to_str())
    if tok.prefix_ids:  # HF's tokenizer(text) then adds what codelm puts before a document
        prefix = [(hf.id_to_token(i), i) for i in tok.prefix_ids]
        template = " ".join(name for name, _ in prefix)
        hf.post_processor = processors.TemplateProcessing(
            single=f"{template} $A", pair=f"{template} $A $B", special_tokens=prefix
        )
    tok_config_path = source / "tokenizer_config.json"  # an imported model's, with its chat template
    tok_config = json.loads(tok_config_path.read_text()) if tok_config_path.is_file() else {}
    tok_config.update(
        {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "model_max_length": model.config.max_seq_len,
            "eos_token": hf.id_to_token(eos_ids[0]) if eos_ids else None,
            "bos_token": hf.id_to_token(bos) if bos is not None else None,
            "add_bos_token": False,  # the post-processor above already adds the prefix
        }
    )
    if merge_lora:
        merge_and_unload(model)  # before writing anything: a broken adapter is refused here
    with atomic_directory(out) as tmp:
        if lora and not merge_lora:
            save_adapter(tmp / "adapter", model, Path(out).resolve())
            unload_lora(model)
        write_model_files(tmp, model, generation_config(tok.prefix_ids, eos_ids, bos))
        hf.save(str(tmp / "tokenizer.json"))
        atomic_write_json(tmp / "tokenizer_config.json", tok_config)
        atomic_write_json(tmp / "generation_config.json", hf_special_ids(eos_ids, bos))
    return Path(out)
