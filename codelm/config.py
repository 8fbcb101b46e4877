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
    zero_init_out_proj: bool = False  # attention and MLP output projections start at zero (tiny.toml: true)

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


@dataclass(frozen=True)
class Shape:
    name: str
    n_layers: int
    dim: int
    n_heads: int
    n_kv_heads: int

    def model_config(self, base: ModelConfig) -> ModelConfig:
        return ModelConfig(**{**base.__dict__, "n_layers": self.n_layers, "dim": self.dim, "n_heads": self.n_heads,
                              "n_kv_heads": self.n_kv_heads})


# The speedrun's model shapes (codelm.train.sizing picks one for the machine), smallest first; every shape keeps the tiny config's head layout (wide heads, one shared key/value head)
LADDER = [Shape("4x96", 4, 96, 1, 1), Shape("4x128", 4, 128, 1, 1), Shape("4x192", 4, 192, 2, 1),
          Shape("4x256", 4, 256, 2, 1), Shape("6x384", 6, 384, 3, 1)]


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
    embed_lr: float = 0.0  # peak learning rate of the token embeddings (AdamW, same schedule); 0: lr
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
    parallel: str = "ddp"  # under torchrun: "ddp" (each process holds the whole model) or "fsdp" (sharded)
    device: str = "auto"  # "auto", "cpu", "cuda", "cuda:1", ...
    log_every: int = 10
    eval_every: int = 200  # steps between validations; 0: only at the end
    eval_tokens: int = 131072  # validation tokens per periodic evaluation (the final one uses all)
    ckpt_every: int = 500  # steps between checkpoints; one is always written at the end
    keep_checkpoints: int = 2
    init_from: str = ""  # a checkpoint (codelm or imported) to start from; its model shape replaces [model]


@dataclass
class LoraConfig:
    """LoRA fine-tuning (codelm.model.lora): low-rank adapters on the named Linear layers, the base frozen."""

    r: int = 0  # adapter rank; 0: LoRA off (full fine-tuning)
    alpha: float = 16.0  # the adapter's output is scaled by alpha / r (alpha / sqrt(r) with rslora)
    targets: str = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"  # comma-separated module names
    rslora: bool = False  # rank-stabilized scaling (Kalajdzievski 2023): alpha / sqrt(r)
    dropout: float = 0.0  # dropout on the adapter's input (training only)


@dataclass
class SFTConfig:
    """Supervised fine-tuning data (codelm.data.sft): chats as JSONL, learned on the assistant's tokens only."""

    data: str = ""  # JSONL: {"messages": [...]}, {"prompt", "completion"} or {"instruction", "response"} per line
    val_fraction: float = 0.05  # held out by a hash of each example, for the validation loss
    epochs: float = 1.0  # passes over the training examples, when train.max_steps and max_minutes are 0


@dataclass
class DistillConfig:
    """Token-level distillation (codelm.train.distill) from a teacher that shares the student's tokenizer."""

    teacher: str = ""  # the teacher's checkpoint
    beta: float = 0.5  # 0: forward KL(teacher || student), 1: reverse KL, between: generalized JSD (GKD)
    temperature: float = 1.0  # both distributions are softened by it
    on_policy: float = 0.0  # GKD's lambda: share of micro batches holding the student's own sampled replies
    sample_temperature: float = 1.0  # on-policy replies are sampled at this temperature
    max_new_tokens: int = 256  # the longest on-policy reply


@dataclass
class RLConfig:
    """Reinforcement learning from execution (codelm.train.rl): sampled programs rewarded by their tests.
    The policy-gradient switches are those of codelm.train.policy_gradient; the README names the settings that
    give GRPO, DAPO, Dr. GRPO, RLOO and REINFORCE."""

    tasks: str = "procedural"  # procedural[:COUNT[:DIFFICULTY[:SEED]]] or a JSONL of tasks (codelm.tasks.collection)
    held_out: float = 0.1  # share of tasks (by a hash of their id) never trained on: the before/after pass rate
    held_out_limit: int = 200  # at most this many held-out tasks are evaluated, greedy, before and after
    chat: bool = False  # ask through the chat template (instruction models) instead of continuing the prompt
    prompts_per_step: int = 8  # tasks per rollout
    samples: int = 4  # completions per task: the group its advantages are computed in
    max_new_tokens: int = 96
    temperature: float = 1.0  # rollouts are sampled at it
    advantage: str = "group_zscore"  # group_mean | group_zscore | rloo | batch
    aggregation: str = "sequence"  # sequence (GRPO) | token (DAPO) | constant (Dr. GRPO)
    epsilon_low: float = 0.2  # ratio clipped to [1 - epsilon_low, 1 + epsilon_high]
    epsilon_high: float = 0.2  # DAPO's clip-higher: 0.28
    kl: str = "none"  # none | k1 | k3: the KL-to-reference estimator added to the loss
    kl_coef: float = 0.0
    updates_per_rollout: int = 1  # optimizer steps on each rollout; above 1 the ratio moves and clipping binds
    skip_zero_spread: bool = True  # drop groups whose samples all got the same reward (no signal)
    mask_truncated: bool = True  # completions cut by max_new_tokens are not learned from
    reward_model: str = ""  # a `codelm reward-model` checkpoint: its score is the reward instead of the tests (RLHF)
    workers: int = 0  # sandbox slots (0: one per core)


@dataclass
class PairsConfig:
    """Preference pairs (codelm.train.pairs) for `codelm dpo` and `codelm reward-model`."""

    file: str = ""  # JSONL of pairs: prompt (text or chat messages), chosen, rejected
    from_tasks: str = ""  # tasks (as rl.tasks) to sample from, pairing a passing with a failing program
    samples: int = 8  # completions per task when building pairs from execution
    max_new_tokens: int = 96
    temperature: float = 1.0
    chat: bool = False  # ask the tasks through the chat template
    val_fraction: float = 0.1  # pairs held out by a hash (of their task, from execution)
    per_step: int = 16  # pairs in one optimizer step (train.micro_batch pairs per micro batch)
    epochs: float = 1.0  # passes over the pairs, when train.max_steps and max_minutes are 0


@dataclass
class DPOConfig:
    """Direct preference optimisation (codelm.train.dpo) on [pairs]."""

    beta: float = 0.1
    loss: str = "sigmoid"  # sigmoid (DPO) | ipo
    reference: str = ""  # the reference checkpoint; empty: train.init_from (with LoRA: its base)


DEFAULT_VAL_FRACTION = 0.05  # 2% of the stdlib is 34 files, one of them a quarter of the tokens: too noisy

@dataclass
class SamplingParams:
    """How the engine chooses tokens; the defaults here are the only ones (the CLI takes its defaults from them).

    Greedy is `strategy="greedy"` and nothing else: temperature, top-k, top-p and min-p apply to
    strategy "sample" only. `from_temperature` reads the other common spelling, temperature 0 for greedy.
    Generation stops at max_new_tokens or when the model's context is full, whichever comes first."""

    strategy: str = "greedy"  # greedy | sample | beam
    max_new_tokens: int = 256
    temperature: float = 1.0
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # 1: off
    min_p: float = 0.0  # 0: off
    repetition_penalty: float = 1.0  # 1: off (CTRL-style: divide positive logits, multiply negative)
    num_beams: int = 4
    length_penalty: float = 1.0  # beam score = sum of log-probs / generated_length ** length_penalty
    early_stopping: bool = True  # beam: stop once num_beams hypotheses have finished
    stop: list[str] = field(default_factory=list)  # stop strings, matched on decoded text
    n: int = 1  # completions per prompt (beam: the best n beams)
    seed: int = 0  # sample j of a request draws from its own generator seeded (seed, j)

    def __post_init__(self):
        checks = [
            (self.strategy in ("greedy", "sample", "beam"), f"strategy must be greedy, sample or beam, got {self.strategy!r}"),
            (self.max_new_tokens >= 1, "max_new_tokens must be at least 1"),
            (self.temperature > 0, "temperature must be > 0 (use strategy greedy for temperature 0)"),
            (self.top_k >= 0, "top_k must be >= 0"),
            (0 < self.top_p <= 1, "top_p must be in (0, 1]"),
            (0 <= self.min_p < 1, "min_p must be in [0, 1)"),
            (self.repetition_penalty > 0, "repetition_penalty must be > 0"),
            (self.num_beams >= 1, "num_beams must be >= 1"),
            (self.n >= 1, "n must be >= 1"),
            (self.strategy != "beam" or self.n <= self.num_beams, "n must be <= num_beams for beam search"),
            (self.strategy != "greedy" or self.n == 1, "greedy decoding gives one completion: use n=1 or strategy sample"),
            (all(self.stop), "stop strings must be non-empty"),
        ]
        for ok, message in checks:
            if not ok:
                raise UserError(message)

    @classmethod
    def from_temperature(cls, temperature: float, **settings) -> "SamplingParams":
        """The OpenAI / vLLM spelling that `codelm eval --temperature` uses: 0 is greedy, anything else samples."""
        if temperature == 0:
            return cls(strategy="greedy", **settings)
        return cls(strategy="sample", temperature=temperature, **settings)


BENCHMARK_FILES = {"mbpp": "mbpp", "humaneval+": "humaneval_plus", "mbpp+": "mbpp_plus"}  # task -> EvalConfig field
CODE_TASKS = ["humaneval", *BENCHMARK_FILES]  # n programs per problem, scored by their tests in the sandbox
MODEL_TASKS = [*CODE_TASKS, "humaneval-infill-single", "humaneval-infill-multi", "bpb"]
TASKS = [*MODEL_TASKS, "contamination"]


@dataclass
class EvalConfig:
    """`codelm eval`: which tasks on which checkpoint, how to sample, where to write."""

    checkpoint: str | None
    tasks: list[str]
    out: str | None = None
    n: int = 1
    temperature: float = 0.0  # 0: greedy
    top_p: float = 0.95  # nucleus for pass@k sampling (Codex); the engine's own default is off
    k: list[int] = field(default_factory=lambda: [1, 10, 100])
    limit: int = 0  # 0: every problem / infilling task
    few_shot: int = 0
    chat: bool = False
    cot: bool = False  # chat: zero-shot chain of thought (reason first, then the code block)
    uncertainty: bool = False  # code tasks: greedy answer too, behaviour clusters, semantic entropy, selection
    behaviour_inputs: int = 20  # --uncertainty: shared inputs per problem (examples, then fuzzed)
    codet: bool = False  # --uncertainty: the model writes tests too; CodeT's dual agreement picks an answer
    bootstrap: int = 1000  # --uncertainty: resamples of the problems for the confidence intervals
    mbpp: str = ""  # mbpp.jsonl or sanitized-mbpp.json (task mbpp; contamination)
    humaneval_plus: str = ""  # HumanEvalPlus.jsonl(.gz) (task humaneval+; contamination)
    mbpp_plus: str = ""  # MbppPlus.jsonl(.gz) (task mbpp+; contamination)
    max_new_tokens: int = 0  # 0: the task's default
    batch_size: int = 16
    seed: int = 0
    dtype: str = "auto"  # auto: the fastest decode step here; fp32, bf16, fp64
    quantize: str | None = None  # "int8": weight-only int8 Linear layers
    compile: bool = False  # the decode step through torch.compile
    data: list[str] = field(default_factory=list)  # bpb
    corpus: list[str] = field(default_factory=list)  # contamination
    contamination_threshold: float = 0.5
    workers: int = 0  # sandbox processes (0: one per core)

    def __post_init__(self):
        unknown = [t for t in self.tasks if t not in TASKS]
        if unknown or not self.tasks:
            raise UserError(f"unknown task(s) {unknown or self.tasks}: choose from {', '.join(TASKS)}")
        if any(t in MODEL_TASKS for t in self.tasks) and not self.checkpoint:
            raise UserError("--checkpoint is required for " + ", ".join(t for t in self.tasks if t in MODEL_TASKS))
        if "bpb" in self.tasks and not self.data:
            raise UserError("task bpb needs --data: files or directories of code to score")
        if self.n < 1 or self.limit < 0 or self.few_shot < 0 or self.batch_size < 1:
            raise UserError("--n and --batch-size must be >= 1; --limit and --few-shot >= 0")
        if any(k < 1 for k in self.k):
            raise UserError(f"--k values must be >= 1, got {self.k}")
        if self.uncertainty and self.n < 2:
            raise UserError(f"--uncertainty clusters several samples per problem: use --n 2 or more with a "
                            f"temperature (e.g. --n 10 --temperature 0.8), got --n {self.n}")
        if self.behaviour_inputs < 1 or self.bootstrap < 0:
            raise UserError("--behaviour-inputs must be >= 1 and --bootstrap >= 0")
        if self.uncertainty and not any(t in CODE_TASKS for t in self.tasks):
            raise UserError(f"--uncertainty needs a code task ({', '.join(CODE_TASKS)})")
        if self.codet and not self.uncertainty:
            raise UserError("--codet picks an answer among --uncertainty's samples by the model's own tests: add "
                            "--uncertainty (with --n 2 or more)")
        if self.cot and not self.chat:
            raise UserError("--cot (reason, then code) is a chat prompting mode: add --chat")
        missing = [t for t, name in BENCHMARK_FILES.items() if t in self.tasks and not getattr(self, name)]
        if missing:
            raise UserError("; ".join(f"task {t} needs --{BENCHMARK_FILES[t].replace('_', '-')} FILE (its published "
                                      "file: nothing is downloaded)" for t in missing))
        if self.temperature == 0 and self.n > 1:
            raise UserError("greedy decoding (--temperature 0) gives one completion per problem: use --n 1, "
                            "or a temperature such as 0.8 for pass@k with k > 1")


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    rl: RLConfig = field(default_factory=RLConfig)
    pairs: PairsConfig = field(default_factory=PairsConfig)
    dpo: DPOConfig = field(default_factory=DPOConfig)


def field_default(cls, name: str):
    """A dataclass field's default: how the CLI takes its defaults from the configs instead of restating them."""
    f = cls.__dataclass_fields__[name]
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def from_args(cls, args, **values):
    """A config from parsed CLI arguments named after its fields; fields with no argument keep their default."""
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}
    return cls(**(given | values))


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
