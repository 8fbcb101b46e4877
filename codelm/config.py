"""Run configuration: dataclasses, TOML files, and `--set section.key=value` overrides.

A config is strict: an unknown key or a value of the wrong type stops the run
at start with one line that names it, instead of being silently ignored an hour
into training. The resolved config is written back as TOML into the run
directory, so every run records exactly what it ran with.
"""

import dataclasses
import json
import math
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path

from codelm.errors import UserError


@dataclass
class ModelConfig:
    vocab_size: int = 8192
    dim: int = 384
    n_layers: int = 6
    n_heads: int = 6
    n_kv_heads: int = 6
    ffn_dim: int = 0  # 0: Llama's rule, 8/3 * dim rounded up to multiple_of
    multiple_of: int = 64
    max_seq_len: int = 256
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    tie_embeddings: bool = False
    qk_norm: bool = False
    init_std: float = 0.02

    def __post_init__(self):
        if self.dim % self.n_heads:
            raise ValueError(f"model.dim={self.dim} is not divisible by model.n_heads={self.n_heads}")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"model.n_heads={self.n_heads} is not divisible by model.n_kv_heads={self.n_kv_heads}")
        if (self.dim // self.n_heads) % 2:
            raise ValueError("model.dim / model.n_heads (the head size) must be even for RoPE")

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def hidden_dim(self) -> int:
        if self.ffn_dim:
            return self.ffn_dim
        hidden = int(8 * self.dim / 3)
        return self.multiple_of * math.ceil(hidden / self.multiple_of)


@dataclass
class DataConfig:
    tokens: str = "data/tokens"  # `codelm tokenize` output: train/, val/, tokenizer.json
    seq_len: int = 256
    fim_rate: float = 0.5  # fraction of documents given the fill-in-the-middle transform
    fim_spm_rate: float = 0.5  # of those, the fraction in SPM rather than PSM order


@dataclass
class OptimConfig:
    name: str = "adamw"  # "adamw", or "muon": Muon for hidden matrices, AdamW (at lr) for embeddings, head, norms
    lr: float = 3e-3
    muon_lr: float = 0.02  # muon only: peak learning rate of the hidden matrices (same schedule as lr)
    muon_momentum: float = 0.95
    min_lr_ratio: float = 0.0  # final learning rate as a fraction of lr
    schedule: str = "cosine"  # "cosine" or "wsd" (warmup-stable-decay)
    warmup_steps: int = 50
    decay_frac: float = 0.3  # wsd only: the final fraction of steps that decays linearly
    weight_decay: float = 0.1  # matrices only; norms and embeddings get none
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0  # 0 disables clipping


@dataclass
class TrainConfig:
    out_dir: str = "runs/default"
    seed: int = 1337
    micro_batch: int = 16  # rows per forward pass per process
    batch_tokens: int = 0  # tokens per optimizer step over all processes; 0: one micro batch each
    max_steps: int = 0  # 0: derived from max_minutes
    max_minutes: float = 0.0  # wall-clock budget; steps are fixed after a short timing
    precision: str = "auto"  # "auto" (the fastest here, measured once), "bf16" (autocast, fp32 master) or "fp32"
    compile: bool = False
    device: str = "auto"  # "auto", "cpu", "cuda", "cuda:1", ...
    log_every: int = 10
    eval_every: int = 200  # steps between validations; 0: only at the end
    eval_tokens: int = 131072  # validation tokens per periodic evaluation (the final one uses all)
    ckpt_every: int = 500  # steps between checkpoints; one is always written at the end
    keep_checkpoints: int = 2


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def _check_type(key: str, value, expected):
    if typing.get_origin(expected) is list:
        (item_type,) = typing.get_args(expected)
        if not isinstance(value, list):
            raise UserError(f"config key '{key}' expects a list, got {type(value).__name__} {value!r}")
        if dataclasses.is_dataclass(item_type):  # [[sources]] tables
            items = []
            for i, item in enumerate(value):
                if not isinstance(item, dict):
                    raise UserError(f"config key '{key}[{i}]' is a table; got {item!r}")
                obj = item_type()
                _apply(obj, item, f"{key}[{i}].")
                items.append(obj)
            return items
        return [_check_type(f"{key}[{i}]", v, item_type) for i, v in enumerate(value)]
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if expected is int and isinstance(value, bool) or not isinstance(value, expected):
        raise UserError(f"config key '{key}' expects {expected.__name__}, got {type(value).__name__} {value!r}")
    return value


def _apply(obj, values: dict, prefix: str = ""):
    """Set dataclass fields from a nested dict, naming the first unknown key or wrong type."""
    fields = {f.name: f for f in dataclasses.fields(obj)}
    hints = typing.get_type_hints(type(obj))
    for key, value in values.items():
        name = f"{prefix}{key}"
        if key not in fields:
            raise UserError(f"unknown config key '{name}' (known: {', '.join(sorted(fields))})")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise UserError(f"config key '{name}' is a section; set its keys as {name}.KEY")
            _apply(current, value, f"{name}.")
        else:
            setattr(obj, key, _check_type(name, value, hints[key]))


def _parse_override(text: str) -> dict:
    """'a.b=3' -> {'a': {'b': 3}}; the value is read as TOML, else taken as a plain string."""
    if "=" not in text:
        raise UserError(f"--set expects section.key=value, got {text!r}")
    key, raw = text.split("=", 1)
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    nested: dict = {}
    node = nested
    parts = key.strip().split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return nested


def fill(cfg, path: str | Path | None = None, overrides: list[str] = ()):
    """Fill any config dataclass from a TOML file, then `--set` overrides; returns it."""
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise UserError(f"config file not found: {path}")
        try:
            _apply(cfg, tomllib.loads(path.read_text()))
        except tomllib.TOMLDecodeError as e:
            raise UserError(f"config file {path} is not valid TOML: {e}") from None
    for text in overrides:
        _apply(cfg, _parse_override(text))
    return cfg


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> Config:
    cfg = fill(Config(), path, overrides)
    try:
        cfg.model.__post_init__()
    except ValueError as e:
        raise UserError(str(e)) from None
    if cfg.optim.name not in ("adamw", "muon"):
        raise UserError(f"optim.name must be 'adamw' or 'muon', got {cfg.optim.name!r}")
    if cfg.optim.schedule not in ("cosine", "wsd"):
        raise UserError(f"optim.schedule must be 'cosine' or 'wsd', got {cfg.optim.schedule!r}")
    if cfg.train.precision not in ("auto", "bf16", "fp32"):
        raise UserError(f"train.precision must be 'auto', 'bf16' or 'fp32', got {cfg.train.precision!r}")
    if cfg.data.seq_len > cfg.model.max_seq_len:
        raise UserError(f"data.seq_len={cfg.data.seq_len} exceeds model.max_seq_len={cfg.model.max_seq_len}")
    return cfg


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def from_dict(values: dict) -> Config:
    cfg = Config()
    _apply(cfg, values)
    return cfg


def to_toml(cfg: Config) -> str:
    """The resolved config as TOML (flat sections of scalars, which is all a Config holds)."""
    lines = []
    for section, values in to_dict(cfg).items():
        lines.append(f"[{section}]")
        for key, value in values.items():
            lines.append(f"{key} = {json.dumps(value) if not isinstance(value, bool) else str(value).lower()}")
        lines.append("")
    return "\n".join(lines)
