"""Checkpoints that survive crashes: written whole under a temporary name, then renamed.

    run/checkpoints/step_000500/
        model.safetensors   weights, HF Llama/Qwen3 tensor names (lm_head omitted when tied, as HF does)
        config.json         HF LlamaConfig (Qwen3Config with QK-norm) fields plus codelm's own model config
        tokenizer.json      the tokenizer the model was trained with
        state.json          step, schedule, loader position, RNG states, run config
        optimizer.pt        optimizer state (training checkpoints only)
    run/checkpoints/latest  name of the newest complete checkpoint

A LoRA run's checkpoint holds its adapters in PEFT's format (codelm.checkpoint.adapter:
adapter_config.json, whose base_model_name_or_path is the base checkpoint, and
adapter_model.safetensors) in place of model.safetensors and config.json; loading
one loads the base and applies the adapters.

A process killed mid-write leaves only a `*.tmp*` directory, which loading
ignores and the next save removes; `latest` is replaced atomically after the
new directory is in place.
"""

import base64
import json
import random
import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np
import safetensors.torch
import torch

from codelm.checkpoint.adapter import is_adapter, load_adapter, read_adapter, save_adapter
from codelm.config import ModelConfig
from codelm.errors import UserError
from codelm.io import atomic_directory, atomic_write_json, atomic_write_text
from codelm.model.llama import Transformer
from codelm.model.lora import lora_spec
from codelm.tokenizer import Tokenizer

HF_DEFAULTS = {  # model types codelm reads, and what transformers assumes where their config.json is silent
    "llama": {"max_position_embeddings": 2048},
    "qwen3": {"max_position_embeddings": 32768, "head_dim": 128},
}


MODEL_CLASS_KEY = "codelm_model_class"  # config.json: a Transformer subclass the checkpoint holds


def hf_config(cfg: ModelConfig) -> dict:
    """config.json: what transformers reads, plus our config under "codelm".

    A QK-norm model is written as Qwen3, which is Llama plus an RMSNorm over head_dim
    (eps rms_norm_eps) of each head's q and k before RoPE: codelm's qk_norm exactly.
    LlamaForCausalLM has no q/k norms and would silently drop those weights."""
    if cfg.qk_norm:
        arch = {"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "use_sliding_window": False,
                "sliding_window": None, "layer_types": ["full_attention"] * cfg.n_layers}
    else:
        arch = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "mlp_bias": False}
    return arch | {
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.dim,
        "intermediate_size": cfg.hidden_dim,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_kv_heads,
        "head_dim": cfg.head_dim,
        "max_position_embeddings": cfg.max_seq_len,
        "rms_norm_eps": cfg.norm_eps,
        "rope_theta": cfg.rope_theta,
        "tie_word_embeddings": cfg.tie_embeddings,
        "hidden_act": "silu",
        "attention_bias": False,
        "codelm": asdict(cfg),
    }


def model_config_from_hf(config: dict) -> ModelConfig:
    """ModelConfig from an HF Llama or Qwen3 config.json; anything codelm's model cannot represent is an error."""
    kind = config.get("model_type")
    if kind not in HF_DEFAULTS:
        raise UserError(f"only Llama and Qwen3 models can be imported; model_type is {kind!r}")
    config = HF_DEFAULTS[kind] | {k: v for k, v in config.items() if v is not None}
    rope = config.get("rope_scaling") or config.get("rope_parameters") or {}  # transformers' order of precedence
    unsupported = {
        "rope_scaling": rope.get("rope_type", rope.get("type", "default")) != "default",
        "attention_bias": bool(config.get("attention_bias")),
        "mlp_bias": bool(config.get("mlp_bias")),
        "hidden_act": config.get("hidden_act", "silu") != "silu",
        "sliding_window": bool(config.get("use_sliding_window")) or
        any(t != "full_attention" for t in config.get("layer_types", [])),
    }
    if any(unsupported.values()):
        raise UserError(f"config.json uses what codelm's model does not implement: "
                        f"{[k for k, bad in unsupported.items() if bad]}")
    dim, heads = config["hidden_size"], config["num_attention_heads"]
    if config.get("head_dim", dim // heads) != dim // heads:
        raise UserError(
            f"head_dim {config['head_dim']} differs from hidden_size / num_attention_heads = {dim // heads}"
        )
    return ModelConfig(
        vocab_size=config["vocab_size"],
        dim=dim,
        n_layers=config["num_hidden_layers"],
        n_heads=heads,
        n_kv_heads=config.get("num_key_value_heads", heads),
        ffn_dim=config["intermediate_size"],
        max_seq_len=config["max_position_embeddings"],
        norm_eps=config.get("rms_norm_eps", 1e-6),
        rope_theta=rope.get("rope_theta", config.get("rope_theta", 10000.0)),
        tie_embeddings=bool(config.get("tie_word_embeddings", False)),
        qk_norm=kind == "qwen3",
    )


def rng_state() -> dict:
    version, internal, gauss = random.getstate()
    _, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": [version, list(internal), gauss],
        "numpy": [keys.tolist(), pos, has_gauss, cached],
        "torch": base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode(),
    }


def set_rng_state(state: dict):
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state(("MT19937", np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(torch.frombuffer(bytearray(base64.b64decode(state["torch"])), dtype=torch.uint8))


def write_model_files(
    directory: Path,
    model: Transformer,
    extra_config: dict | None = None,
    weights: dict[str, torch.Tensor] | None = None,
):
    """model.safetensors and config.json, the part of a checkpoint that HF tools read. weights: the model's
    whole state_dict when the model itself holds only shards of it (FSDP)."""
    weights = model.state_dict() if weights is None else weights
    if any(t.dtype == torch.int8 for t in weights.values()):
        raise UserError(
            "refusing to save int8-quantized weights: they are an inference-only copy "
            "(save the model before quantize_int8)"
        )
    weights = {k: v.detach().contiguous().cpu() for k, v in weights.items()}
    if model.config.tie_embeddings:
        weights.pop("lm_head.weight")
    safetensors.torch.save_file(weights, directory / "model.safetensors", metadata={"format": "pt"})
    config = hf_config(model.config)
    config["torch_dtype"] = str(next(iter(weights.values())).dtype).removeprefix("torch.")
    own_class = next(c for c in type(model).__mro__ if c.__module__.startswith("codelm."))  # FSDP swaps in a subclass
    if own_class is not Transformer:  # a subclass (the reward model) is loaded as itself, never as an LM
        config[MODEL_CLASS_KEY] = own_class.__name__
    atomic_write_json(directory / "config.json", config | (extra_config or {}))


def save_model(
    out: str | Path,
    model: Transformer,
    tokenizer: Tokenizer,
    extra_config: dict | None = None,
    tokenizer_config: dict | None = None,
) -> Path:
    """A checkpoint with no training state (an imported model), written whole or not at all.

    tokenizer_config: HF's tokenizer_config.json (special-token names, chat template), kept for export."""
    with atomic_directory(out) as tmp:
        write_model_files(tmp, model, extra_config)
        tokenizer.save(tmp / "tokenizer.json")
        if tokenizer_config is not None:
            atomic_write_json(tmp / "tokenizer_config.json", tokenizer_config)
    return Path(out)


def token_id_list(value) -> list[int]:
    """HF configs give eos_token_id as an int, a list of ints, or null."""
    return list(value) if isinstance(value, list) else [] if value is None else [value]


def save_checkpoint(
    ckpt_root: str | Path,
    step: int,
    model: Transformer,
    tokenizer_path: str | Path,
    state: dict,
    optimizer_state: dict | None = None,
    keep: int = 2,
    base_model: str | Path | None = None,
    weights: dict[str, torch.Tensor] | None = None,
) -> Path:
    """A training checkpoint. base_model is the checkpoint the run started from (train.init_from), if any;
    weights, the model's whole state_dict when the model holds only its shards (FSDP). A
    model with LoRA adapters saves only them (PEFT format), recording base_model as their
    base_model_name_or_path; a whole model keeps base_model's chat template (tokenizer_config.json) and
    generation settings (where documents start, which tokens end a reply), so a fine-tuned import still chats."""
    base = resolve_checkpoint(base_model).resolve() if base_model is not None else None
    if lora_spec(model) is not None:
        if base is None:
            raise ValueError("save_checkpoint: a LoRA model needs base_model, the checkpoint its adapters apply to")
        if is_adapter(base):
            raise UserError(f"the base {base} is itself a LoRA adapter: merge it into a plain checkpoint first")
    root = Path(ckpt_root)
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob("*.tmp*"):
        shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink()
    name = f"step_{step:06d}"
    final = root / name
    with atomic_directory(final) as tmp:
        if lora_spec(model) is not None:
            save_adapter(tmp, model, base)
        else:
            write_model_files(tmp, model, inherited_config(base, model) if base is not None else None, weights)
            if base is not None and (base / "tokenizer_config.json").is_file():
                shutil.copyfile(base / "tokenizer_config.json", tmp / "tokenizer_config.json")
        shutil.copyfile(tokenizer_path, tmp / "tokenizer.json")
        if optimizer_state is not None:
            torch.save(optimizer_state, tmp / "optimizer.pt")
        atomic_write_json(tmp / "state.json", {"step": step, **state})
    atomic_write_text(root / "latest", name)
    for old in sorted(p for p in root.glob("step_*") if p.is_dir() and ".tmp" not in p.name)[:-keep]:
        shutil.rmtree(old)
    return final


def inherited_config(base: Path, model: Transformer) -> dict:
    """The keys of base's config.json that the model's shape does not determine (an import's generation
    settings: codelm_prefix_ids, eos_token_id, ...), carried into checkpoints trained from it."""
    config = json.loads((base / "config.json").read_text()) if (base / "config.json").is_file() else {}
    own = hf_config(model.config)
    return {k: v for k, v in config.items() if k not in own and k != "torch_dtype"}


def latest_checkpoint(ckpt_root: str | Path) -> Path | None:
    pointer = Path(ckpt_root) / "latest"
    if not pointer.is_file():
        return None
    path = Path(ckpt_root) / pointer.read_text().strip()
    return path if path.is_dir() else None


def resolve_checkpoint(path: str | Path) -> Path:
    """Accept a checkpoint or adapter directory, a run's checkpoints/ directory, or a run directory."""
    path = Path(path)
    if (path / "model.safetensors").is_file() or is_adapter(path):
        return path
    for root in (path, path / "checkpoints"):
        found = latest_checkpoint(root)
        if found is not None:
            return found
    raise UserError(
        f"no checkpoint at {path} (expected model.safetensors, adapter_config.json, or a run with checkpoints/latest)"
    )


def load_model(
    path: str | Path, device="cpu", model_class: type[Transformer] = Transformer
) -> tuple[Transformer, Tokenizer, Path]:
    """Model (eval mode, fp32) and tokenizer from a checkpoint directory.

    An imported model's config.json sets where documents start (`codelm_prefix_ids`)
    and which tokens end generation (`eos_token_id`, with <|endoftext|> if present);
    its tokenizer_config.json, the chat template. An adapter directory gives its base (tokenizer included)
    with the adapters applied, unmerged (codelm.model.lora.merge_and_unload folds them in)."""
    ckpt = resolve_checkpoint(path)
    if is_adapter(ckpt):
        model, tok, _ = load_model(adapter_base(ckpt), device)
        load_adapter(model, ckpt)
        return model.eval(), tok, ckpt
    config = json.loads((ckpt / "config.json").read_text())
    held = config.get(MODEL_CLASS_KEY, Transformer.__name__)
    if held != model_class.__name__:
        raise UserError(
            f"{ckpt} holds a {held}, not a {model_class.__name__}: "
            + (
                "a reward model scores sequences (rl.reward_model), it does not generate"
                if model_class is Transformer
                else "train one with its own command first"
            )
        )
    model = model_class(ModelConfig(**config["codelm"]))
    load_weights(model, ckpt)
    tok = Tokenizer.load(ckpt / "tokenizer.json", required=())
    tok.prefix_ids = config.get("codelm_prefix_ids", tok.prefix_ids)
    tok.stop_ids |= set(token_id_list(config.get("eos_token_id")))
    if (ckpt / "tokenizer_config.json").is_file():
        tok.chat_template = json.loads((ckpt / "tokenizer_config.json").read_text()).get("chat_template")
    return model.float().to(device).eval(), tok, ckpt


def adapter_base(ckpt: Path) -> Path:
    """The checkpoint an adapter directory applies to: its base_model_name_or_path, relative to the adapter."""
    name = read_adapter(ckpt).base_model
    base = ckpt / name if name else None
    if base is not None and is_adapter(base):
        raise UserError(
            f"the base of the adapter in {ckpt}, {base}, is itself a LoRA adapter: merge it into a "
            "plain checkpoint first (codelm export hf --merge-lora, then codelm import hf)"
        )
    if base is None or not ((base / "model.safetensors").is_file() and (base / "config.json").is_file()):
        raise UserError(
            f"the adapter in {ckpt} names base_model_name_or_path {name!r}, which is not a codelm "
            "checkpoint directory here (import the base model and set it there)"
        )
    return base


def load_weights(model: Transformer, ckpt: Path):
    """The checkpoint's weights into the model; an adapter checkpoint's base and adapters into a model
    that already has adapters of the same spec (resume applies LoRA before building its optimizer)."""
    if is_adapter(ckpt):
        adapter = read_adapter(ckpt)
        if lora_spec(model) != adapter.spec:
            raise UserError(f"checkpoint {ckpt} holds LoRA adapters {adapter.spec}; the model's are {lora_spec(model)}")
        base = adapter_base(ckpt)
        weights = safetensors.torch.load_file(base / "model.safetensors") | adapter.weights
        load_state(model, weights, f"checkpoint {ckpt} on its base {base}")
        return
    weights = safetensors.torch.load_file(ckpt / "model.safetensors")
    load_state(model, weights, f"checkpoint {ckpt}")


def load_state(model: Transformer, weights: dict[str, torch.Tensor], source: str):
    """Copy HF-named weights into the model (fp32); a missing or extra tensor is an error naming `source`."""
    missing, unexpected = model.load_state_dict({k: v.float() for k, v in weights.items()}, strict=False)
    allowed_missing = {"lm_head.weight"} if model.config.tie_embeddings else set()
    if set(missing) - allowed_missing or unexpected:
        raise UserError(f"{source} does not match the model: missing {missing[:5]}, unexpected {unexpected[:5]}")


def load_training_state(ckpt: Path) -> dict:
    """The loop's state.json: step, planned steps, elapsed time, the loader's and the RNGs' states."""
    return json.loads((ckpt / "state.json").read_text())


def load_optimizer_state(ckpt: Path) -> dict:
    return torch.load(ckpt / "optimizer.pt", weights_only=True, map_location="cpu")  # the optimizer moves it
