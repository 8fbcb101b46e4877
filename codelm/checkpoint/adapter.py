"""LoRA adapters in PEFT's on-disk format, so `peft.PeftModel.from_pretrained` loads codelm's adapters.

    adapter_config.json        peft_type LORA, r, lora_alpha, target_modules, ..., base_model_name_or_path
    adapter_model.safetensors  base_model.model.<module>.lora_A.weight (r, in) and .lora_B.weight (out, r)

PEFT's tensor names are the model's own (codelm's are HF's) behind the PeftModel
wrapper's `base_model.model.` prefix, with the adapter name ("default") dropped, as
its save_pretrained writes them. Reading refuses the PEFT features codelm's LoRA
does not implement (DoRA, per-layer ranks, biases, ...) instead of ignoring them.
"""

import json
from dataclasses import dataclass
from pathlib import Path

import safetensors.torch
import torch

from codelm.errors import UserError
from codelm.io import atomic_write_bytes, atomic_write_json
from codelm.model.llama import Transformer
from codelm.model.lora import LoraSpec, apply_lora, lora_layers, lora_spec

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PREFIX = "base_model.model."  # PeftModel -> LoraModel -> the transformers model


@dataclass
class Adapter:
    spec: LoraSpec
    base_model: str | None  # base_model_name_or_path as written
    weights: dict[str, torch.Tensor]  # codelm names: model.layers.0.self_attn.q_proj.lora_A.weight


def is_adapter(directory: str | Path) -> bool:
    return (Path(directory) / ADAPTER_CONFIG).is_file()


def lora_state(model: Transformer) -> dict[str, torch.Tensor]:
    """The adapters' tensors under codelm's (HF's) names."""
    return {f"{name}.lora_{x}.weight": getattr(m, f"lora_{x}").weight
            for name, m in lora_layers(model) for x in "AB"}


def save_adapter(directory: str | Path, model: Transformer, base_model_path: str | Path | None):
    """Write the model's adapters into `directory` (created if missing), each file atomically.

    base_model_path is recorded as base_model_name_or_path: where codelm finds the base again."""
    spec = lora_spec(model)
    if spec is None:
        raise ValueError("save_adapter: the model has no LoRA adapters")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    weights = {PREFIX + k: v.detach().contiguous().cpu() for k, v in lora_state(model).items()}
    atomic_write_bytes(directory / ADAPTER_WEIGHTS, [safetensors.torch.save(weights, metadata={"format": "pt"})])
    atomic_write_json(directory / ADAPTER_CONFIG, {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": spec.r,
        "lora_alpha": int(spec.alpha) if float(spec.alpha).is_integer() else spec.alpha,
        "target_modules": list(spec.targets),
        "lora_dropout": spec.dropout,
        "use_rslora": spec.rslora,
        "bias": "none",
        "fan_in_fan_out": False,
        "init_lora_weights": True,
        "use_dora": False,
        "modules_to_save": None,
        "layers_to_transform": None,
        "inference_mode": True,
        "base_model_name_or_path": None if base_model_path is None else str(base_model_path),
    })


def read_adapter(directory: str | Path) -> Adapter:
    """An adapter directory's spec, base and tensors; what codelm cannot apply is a one-line error."""
    directory = Path(directory)
    for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS):
        if not (directory / name).is_file():
            raise UserError(f"{directory / name} not found: a PEFT LoRA adapter needs {ADAPTER_CONFIG} "
                            f"and {ADAPTER_WEIGHTS}")
    try:
        config = json.loads((directory / ADAPTER_CONFIG).read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{directory / ADAPTER_CONFIG} is not valid JSON: {e}") from None
    if config.get("peft_type") != "LORA":
        raise UserError(f"{directory} holds a {config.get('peft_type')} adapter; codelm reads LoRA only")
    missing = [k for k in ("r", "lora_alpha", "target_modules") if config.get(k) is None]
    if missing:
        raise UserError(f"{directory / ADAPTER_CONFIG} lacks {missing}")
    unsupported = {
        "use_dora": bool(config.get("use_dora")),
        "bias": config.get("bias", "none") != "none" or bool(config.get("lora_bias")),
        "fan_in_fan_out": bool(config.get("fan_in_fan_out")),
        "rank_pattern": bool(config.get("rank_pattern")),
        "alpha_pattern": bool(config.get("alpha_pattern")),
        "layers_to_transform": config.get("layers_to_transform") is not None,
        "exclude_modules": bool(config.get("exclude_modules")),
        "modules_to_save": bool(config.get("modules_to_save")),
        "target_modules (a regex)": not isinstance(config.get("target_modules"), list),
    }
    if any(unsupported.values()):
        raise UserError(f"{directory / ADAPTER_CONFIG} uses what codelm's LoRA does not implement: "
                        f"{[k for k, bad in unsupported.items() if bad]}")
    spec = LoraSpec(config["r"], config["lora_alpha"], tuple(config["target_modules"]),
                    bool(config.get("use_rslora")), float(config.get("lora_dropout") or 0.0))
    stored = safetensors.torch.load_file(directory / ADAPTER_WEIGHTS)
    foreign = [k for k in stored if not k.startswith(PREFIX)]
    if foreign:
        raise UserError(f"{directory / ADAPTER_WEIGHTS} has tensors outside {PREFIX}*: {foreign[:3]}")
    weights = {k.removeprefix(PREFIX): v for k, v in stored.items()}
    return Adapter(spec, config.get("base_model_name_or_path"), weights)


@torch.no_grad()
def load_adapter(model: Transformer, directory: str | Path) -> LoraSpec:
    """Put the adapter in `directory` on the model (apply_lora: the base is frozen); returns its spec."""
    adapter = read_adapter(directory)
    apply_lora(model, adapter.spec)
    params = lora_state(model)
    missing, unexpected = sorted(params.keys() - adapter.weights.keys()), sorted(adapter.weights.keys() - params.keys())
    wrong = [k for k in params.keys() & adapter.weights.keys() if params[k].shape != adapter.weights[k].shape]
    if missing or unexpected or wrong:
        raise UserError(f"the adapter in {directory} does not match the model: missing {missing[:3]}, "
                        f"unexpected {unexpected[:3]}, wrong shape {wrong[:3]}")
    for name, param in params.items():
        param.copy_(adapter.weights[name])
    return adapter.spec
