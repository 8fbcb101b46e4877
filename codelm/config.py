"""Run configuration: dataclasses, TOML files, and `--set section.key=value` overrides.

Every setting is a dataclass field declared with `knob(default, help)`: its default and its help text live
here once, and the CLI builds its options and `--help` from them (codelm.cli.options). A field typed
`Literal[...]` takes only those values. A config is strict: an unknown key or a value of the wrong type or
choice stops the run at start with one line that names it, instead of being silently ignored an hour into
training. The resolved config is written back as TOML next to a run's outputs, so `--config` replays it.
"""

import dataclasses
import math
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from codelm.errors import UserError

Precision = Literal["auto", "fp32", "bf16", "fp64"]


def knob(default=dataclasses.MISSING, help: str = "", *, factory=dataclasses.MISSING, comma: bool = False,
         metavar: str = ""):
    """A setting: its default and its one help text. comma: a list option given as `a,b,c` on the command line;
    metavar: how its flag's value is shown (default: the key's name)."""
    return field(default=default, default_factory=factory,
                 metadata={"help": help, "comma": comma, "metavar": metavar})


def field_default(cls, name: str):
    """A dataclass field's default."""
    f = cls.__dataclass_fields__[name]
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


@dataclass
class ModelConfig:
    vocab_size: int = knob(8192, "vocabulary size, special tokens included (the tokenizer's)")
    dim: int = knob(384, "model width (embedding size)")
    n_layers: int = knob(6, "transformer blocks")
    n_heads: int = knob(6, "attention heads (the head size is dim / n_heads)")
    n_kv_heads: int = knob(6, "key/value heads (grouped-query attention; n_heads must be a multiple)")
    ffn_dim: int = knob(0, "the MLP's hidden size; 0: Llama's rule, 8/3 * dim rounded up to multiple_of")
    multiple_of: int = knob(64, "the MLP's hidden size is rounded up to a multiple of this")
    max_seq_len: int = knob(256, "the model's context in tokens (RoPE positions)")
    rope_theta: float = knob(10000.0, "RoPE base frequency")
    norm_eps: float = knob(1e-5, "RMSNorm epsilon")
    tie_embeddings: bool = knob(False, "the LM head shares the token embedding matrix")
    qk_norm: bool = knob(False, "RMSNorm on queries and keys per head (Qwen3, OLMo 2)")
    init_std: float = knob(0.02, "standard deviation of the initial weights")
    zero_init_out_proj: bool = knob(False, "attention and MLP output projections start at zero (each block starts "
                                           "as the identity)")

    def __post_init__(self):
        self.check()

    def check(self):
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


# The speedrun's model shapes (codelm.train.sizing picks one for the machine), smallest first; every shape keeps
# the tiny config's head layout (wide heads, one shared key/value head)
LADDER = [
    Shape("4x96", 4, 96, 1, 1),
    Shape("4x128", 4, 128, 1, 1),
    Shape("4x192", 4, 192, 2, 1),
    Shape("4x256", 4, 256, 2, 1),
    Shape("6x384", 6, 384, 3, 1),
]


@dataclass
class DataConfig:
    tokens: str = knob("data/tokens", "`codelm tokenize` output: train/, val/, tokenizer.json")
    seq_len: int = knob(0, "tokens per training row; 0: the model's context, at most AUTO_SEQ_LEN_CAP (1024)")
    fim_rate: float = knob(0.5, "fraction of documents given the fill-in-the-middle transform")
    fim_spm_rate: float = knob(0.5, "of the FIM documents, the fraction in SPM rather than PSM order")


@dataclass
class OptimConfig:
    name: Literal["adamw", "muon"] = knob(
        "adamw", "muon: Muon for the hidden matrices, AdamW (at lr) for embeddings, head and norms"
    )
    lr: float = knob(3e-3, "peak learning rate (AdamW; with muon: embeddings, head and norms)")
    muon_lr: float = knob(0.02, "muon only: peak learning rate of the hidden matrices (same schedule as lr)")
    muon_momentum: float = knob(0.95, "muon only: momentum of the hidden matrices' updates")
    embed_lr: float = knob(0.0, "peak learning rate of the token embeddings (AdamW, same schedule); 0: lr")
    min_lr_ratio: float = knob(0.0, "final learning rate as a fraction of lr")
    schedule: Literal["cosine", "wsd"] = knob("cosine", "the learning-rate schedule (wsd: warmup-stable-decay)")
    warmup_steps: int = knob(50, "steps of linear warmup to the peak learning rate")
    decay_frac: float = knob(0.3, "wsd only: the final fraction of steps that decays linearly")
    weight_decay: float = knob(0.1, "AdamW weight decay of the matrices (norms and embeddings get none)")
    beta1: float = knob(0.9, "AdamW beta1")
    beta2: float = knob(0.95, "AdamW beta2")
    eps: float = knob(1e-8, "AdamW epsilon")
    grad_clip: float = knob(1.0, "clip the gradient's global norm to this (0: off)")


@dataclass
class TrainConfig:
    out_dir: str = knob("runs/default", "the run directory: config.toml, metrics.jsonl, checkpoints/, report.md")
    seed: int = knob(1337, "seeds the initial weights, the data order and the FIM transform")
    micro_batch: int = knob(16, "rows per forward pass per process")
    batch_tokens: int = knob(0, "tokens per optimizer step over all processes; 0: one micro batch each")
    max_steps: int = knob(0, "optimizer steps; 0: derived from max_minutes")
    max_minutes: float = knob(0.0, "wall-clock budget; steps are fixed after a short timing")
    precision: Literal["auto", "bf16", "fp32"] = knob(
        "auto", "auto: the fastest here, measured once; bf16: autocast with fp32 master weights"
    )
    compile: bool = knob(False, "compile the model with torch.compile")
    parallel: Literal["ddp", "fsdp"] = knob(
        "ddp", "under torchrun: ddp (each process holds the whole model) or fsdp (sharded)"
    )
    device: str = knob("auto", "auto, cpu, cuda, cuda:1, ...")
    log_every: int = knob(10, "steps between log lines")
    eval_every: int = knob(200, "steps between validations; 0: only at the end")
    eval_tokens: int = knob(131072, "validation tokens per periodic evaluation (the final one uses all)")
    ckpt_every: int = knob(500, "steps between checkpoints; one is always written at the end")
    keep_checkpoints: int = knob(2, "checkpoints kept on disk (the oldest are deleted)")
    init_from: str = knob("", "a checkpoint (codelm or imported) to start from; its model shape replaces [model]")


@dataclass
class LoraConfig:
    """LoRA fine-tuning (codelm.model.lora): low-rank adapters on the named Linear layers, the base frozen."""

    r: int = knob(0, "adapter rank; 0: LoRA off (full fine-tuning)")
    alpha: float = knob(16.0, "the adapter's output is scaled by alpha / r (alpha / sqrt(r) with rslora)")
    targets: str = knob("q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj", "comma-separated module names")
    rslora: bool = knob(False, "rank-stabilized scaling (Kalajdzievski 2023): alpha / sqrt(r)")
    dropout: float = knob(0.0, "dropout on the adapter's input (training only)")


@dataclass
class SFTConfig:
    """Supervised fine-tuning data (codelm.data.sft): chats as JSONL, learned on the assistant's tokens only."""

    data: str = knob("", "JSONL: {'messages': [...]}, {'prompt', 'completion'} or {'instruction', 'response'} per line")
    val_fraction: float = knob(0.05, "held out by a hash of each example, for the validation loss")
    epochs: float = knob(1.0, "passes over the training examples, when train.max_steps and max_minutes are 0")


@dataclass
class DistillConfig:
    """Token-level distillation (codelm.train.distill) from a teacher that shares the student's tokenizer."""

    teacher: str = knob("", "the teacher's checkpoint")
    beta: float = knob(0.5, "0: forward KL(teacher || student), 1: reverse KL, between: generalized JSD (GKD)")
    temperature: float = knob(1.0, "both distributions are softened by it")
    on_policy: float = knob(0.0, "GKD's lambda: share of micro batches holding the student's own sampled replies")
    sample_temperature: float = knob(1.0, "on-policy replies are sampled at this temperature")
    max_new_tokens: int = knob(256, "the longest on-policy reply")


@dataclass
class RLConfig:
    """Reinforcement learning from execution (codelm.train.rl): sampled programs rewarded by their tests.
    The policy-gradient switches are those of codelm.train.policy_gradient; docs/commands/rl.md names the
    settings that give GRPO, DAPO, Dr. GRPO, RLOO and REINFORCE."""

    tasks: str = knob(
        "procedural", "procedural[:COUNT[:DIFFICULTY[:SEED]]] or a JSONL of tasks (codelm.tasks.collection)"
    )
    held_out: float = knob(0.1, "share of tasks (by a hash of their id) never trained on: the before/after pass rate")
    held_out_limit: int = knob(200, "at most this many held-out tasks are evaluated, greedy, before and after")
    chat: bool = knob(False, "ask through the chat template (instruction models) instead of continuing the prompt")
    prompts_per_step: int = knob(8, "tasks per rollout")
    samples: int = knob(4, "completions per task: the group its advantages are computed in")
    max_new_tokens: int = knob(96, "the longest sampled completion")
    temperature: float = knob(1.0, "rollouts are sampled at it")
    advantage: Literal["group_mean", "group_zscore", "rloo", "batch"] = knob(
        "group_zscore",
        "how rewards become advantages: within each task's group (mean or z-score), leave-one-out, or over the batch",
    )
    aggregation: Literal["sequence", "token", "constant"] = knob(
        "sequence", "how token losses are summed: per sequence (GRPO), per token (DAPO) or by a constant (Dr. GRPO)"
    )
    epsilon_low: float = knob(0.2, "ratio clipped to [1 - epsilon_low, 1 + epsilon_high]")
    epsilon_high: float = knob(0.2, "the upper clip (DAPO's clip-higher uses 0.28)")
    kl: Literal["none", "k1", "k3"] = knob("none", "the KL-to-reference estimator added to the loss")
    kl_coef: float = knob(0.0, "weight of the KL-to-reference term (with kl k1 or k3)")
    updates_per_rollout: int = knob(1, "optimizer steps on each rollout; above 1 the ratio moves and clipping binds")
    skip_zero_spread: bool = knob(True, "drop groups whose samples all got the same reward (no signal)")
    mask_truncated: bool = knob(True, "completions cut by max_new_tokens are not learned from")
    reward_model: str = knob(
        "", "a `codelm reward-model` checkpoint: its score is the reward instead of the tests (RLHF)"
    )
    workers: int = knob(0, "sandbox slots (0: one per core)")


@dataclass
class PairsConfig:
    """Preference pairs (codelm.train.pairs) for `codelm dpo` and `codelm reward-model`."""

    file: str = knob("", "JSONL of pairs: prompt (text or chat messages), chosen, rejected")
    from_tasks: str = knob("", "tasks (as rl.tasks) to sample from, pairing a passing with a failing program")
    samples: int = knob(8, "completions per task when building pairs from execution")
    max_new_tokens: int = knob(96, "the longest sampled completion when building pairs")
    temperature: float = knob(1.0, "sampling temperature when building pairs")
    chat: bool = knob(False, "ask the tasks through the chat template")
    val_fraction: float = knob(0.1, "pairs held out by a hash (of their task, from execution)")
    per_step: int = knob(16, "pairs in one optimizer step (train.micro_batch pairs per micro batch)")
    epochs: float = knob(1.0, "passes over the pairs, when train.max_steps and max_minutes are 0")
    workers: int = knob(0, "sandbox slots when building pairs from execution (0: one per core)")


@dataclass
class DPOConfig:
    """Direct preference optimisation (codelm.train.dpo) on [pairs]."""

    beta: float = knob(0.1, "strength of the pull towards the reference (DPO's beta)")
    loss: Literal["sigmoid", "ipo"] = knob("sigmoid", "sigmoid: DPO's loss; ipo: IPO's squared loss")
    reference: str = knob("", "the reference checkpoint; empty: train.init_from (with LoRA: its base)")


DEFAULT_VAL_FRACTION = 0.05  # 2% of the stdlib is 34 files, one of them a quarter of the tokens: too noisy
DATA_HELP = (
    "a `codelm curate` output directory, or files/directories of code read as they are (repeatable); "
    "none: the Python standard library of this interpreter"
)
VAL_FRACTION_HELP = "fraction of files held out for validation, chosen by path hash"


@dataclass
class TokenizerTrainConfig:
    """`codelm tokenizer train`: byte-level BPE on a corpus's training split."""

    data: list[str] = knob(help=DATA_HELP, factory=list)
    out: str = knob("", "where to write tokenizer.json")
    vocab_size: int = knob(field_default(ModelConfig, "vocab_size"), "vocabulary size, special tokens included")
    val_fraction: float = knob(DEFAULT_VAL_FRACTION, VAL_FRACTION_HELP)

    def check(self):
        if not self.out:
            raise UserError("--out is required")


@dataclass
class TokenizeConfig:
    """`codelm tokenize`: a corpus into train/val token shards."""

    data: list[str] = knob(help=DATA_HELP, factory=list)
    tokenizer: str = knob("", "the tokenizer.json to encode with")
    out: str = knob("", "output directory: train/, val/, tokenizer.json, stats.json")
    val_fraction: float = knob(DEFAULT_VAL_FRACTION, VAL_FRACTION_HELP)

    def check(self):
        if not (self.tokenizer and self.out):
            raise UserError("--tokenizer and --out are required")


@dataclass
class SamplingParams:
    """How the engine chooses tokens; the defaults here are the only ones (the CLI takes its defaults from them).

    Greedy is `strategy="greedy"` and nothing else: temperature, top-k, top-p and min-p apply to
    strategy "sample" only. `from_temperature` reads the other common spelling, temperature 0 for greedy.
    Generation stops at max_new_tokens or when the model's context is full, whichever comes first."""

    strategy: Literal["greedy", "sample", "beam"] = knob("greedy", "how tokens are chosen")
    max_new_tokens: int = knob(256, "new tokens at most; generation also stops at the end of the model's context")
    temperature: float = knob(1.0, "sampling temperature (strategy sample)")
    top_k: int = knob(0, "keep the k most likely tokens (0: off)")
    top_p: float = knob(1.0, "nucleus: the smallest set of tokens with this mass (1: off)")
    min_p: float = knob(0.0, "drop tokens below min_p x the top probability (0: off)")
    repetition_penalty: float = knob(1.0, "1: off (CTRL-style: divide positive logits, multiply negative)")
    num_beams: int = knob(4, "beam width (strategy beam)")
    length_penalty: float = knob(1.0, "beam score = sum of log-probs / generated_length ** length_penalty")
    early_stopping: bool = knob(True, "beam: stop once num_beams hypotheses have finished")
    stop: list[str] = knob(help="stop strings, matched on decoded text", factory=list)
    n: int = knob(1, "completions per prompt (beam: the best n beams)")
    seed: int = knob(0, "sample j of a request draws from its own generator seeded (seed, j)")

    def __post_init__(self):
        self.check()

    def check(self):
        checks = [
            (self.max_new_tokens >= 1, "max_new_tokens must be at least 1"),
            (self.temperature > 0, "temperature must be > 0 (use strategy greedy for temperature 0)"),
            (self.top_k >= 0, "top_k must be >= 0"),
            (0 < self.top_p <= 1, "top_p must be in (0, 1]"),
            (0 <= self.min_p < 1, "min_p must be in [0, 1)"),
            (self.repetition_penalty > 0, "repetition_penalty must be > 0"),
            (self.num_beams >= 1, "num_beams must be >= 1"),
            (self.n >= 1, "n must be >= 1"),
            (self.strategy != "beam" or self.n <= self.num_beams, "n must be <= num_beams for beam search"),
            (
                self.strategy != "greedy" or self.n == 1,
                "greedy decoding gives one completion: use n=1 or strategy sample",
            ),
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


@dataclass
class EngineConfig:
    """How the inference engine runs a model (codelm.inference.engine)."""

    dtype: Precision = knob(
        "auto",
        "weights and cache precision; auto: the fastest decode step on this machine, "
        "timed once and cached; fp64: greedy output independent of the batch size",
    )
    quantize: Literal["none", "int8"] = knob(
        "none",
        "int8: weight-only int8 Linear layers (per-channel scales, "
        "activations in full precision; builds a small C++ kernel once)",
    )
    compile: bool = knob(
        False,
        "compile the decode step with torch.compile: faster per token after a slow "
        "first compile, so it pays only for long generations",
    )

    def options(self) -> dict:
        """Keyword arguments of Engine.from_checkpoint."""
        return {
            "dtype": self.dtype,
            "quantize": None if self.quantize == "none" else self.quantize,
            "compile": self.compile,
        }


@dataclass
class GenerateConfig:
    """`codelm generate`: what to continue, with which model, and how to draft."""

    checkpoint: str = knob("", "checkpoint directory or run directory")
    prompt: str = knob("", "text to continue")
    prompt_file: str = knob("", "file whose text to continue (- : standard input)")
    draft_checkpoint: str = knob("", "speculative decoding with this smaller model (same tokenizer)")
    prompt_lookup: bool = knob(False, "speculative decoding with prompt-lookup drafts")
    num_draft: int = knob(4, "draft tokens per round")
    json_object: bool = knob(False, "constrain the completion to a JSON object")
    json_schema: str = knob("", "constrain the completion to JSON valid under this JSON schema file")
    regex: str = knob("", "constrain the completion to match this regular expression")
    grammar: str = knob("", "constrain the completion to this Lark grammar file (llguidance's Lark dialect)")
    choice: list[str] = knob(help="constrain the completion to one of these strings (repeatable)", factory=list)
    constrain: Literal["none", "python"] = knob(
        "none", "python: the completion must parse as Python (it continues the prompt's code; with --chat the "
        "reply is the program), checked by Python's compiler at each line end with backtracking; the text is "
        "printed when it is done")
    chat: bool = knob(False, "ask the prompt as a user message through the model's chat template; the reply "
                      "ends at the end of its turn")
    tools: str = knob("", "with chat: a JSON file of OpenAI tool definitions the model may call")
    tool_choice: str = knob("auto", "with tools: auto, none, required, or the name of the function to call")

    def check(self):
        if not self.checkpoint:
            raise UserError("--checkpoint is required")
        if self.prompt and self.prompt_file:
            raise UserError("give one of --prompt TEXT and --prompt-file FILE, not both")
        given = [name for name in ("json_object", "json_schema", "regex", "grammar", "choice") if getattr(self, name)]
        given += ["constrain"] if self.constrain != "none" else []
        if len(given) > 1:
            raise UserError(f"give at most one constraint, got {', '.join('--' + g.replace('_', '-') for g in given)}")
        if self.tools and (given or not self.chat):
            raise UserError("--tools needs --chat, and no other constraint (the tools' calls are the constraint)")
        if self.draft_checkpoint and self.prompt_lookup:
            raise UserError("give at most one drafter: --draft-checkpoint or --prompt-lookup")
        if self.num_draft < 1:
            raise UserError("--num-draft must be >= 1")


@dataclass
class CompleteConfig:
    """`codelm complete`: fill in the middle between two files."""

    checkpoint: str = knob("", "checkpoint directory or run directory")
    prefix_file: str = knob("", "the code before the gap (- : standard input)")
    suffix_file: str = knob("", "the code after the gap")

    def check(self):
        if not (self.checkpoint and self.prefix_file and self.suffix_file):
            raise UserError("--checkpoint, --prefix-file and --suffix-file are required")


BENCHMARK_FILES = {"mbpp": "mbpp", "humaneval+": "humaneval_plus", "mbpp+": "mbpp_plus"}  # task -> EvalConfig field
CODE_TASKS = ["humaneval", *BENCHMARK_FILES]  # n programs per problem, scored by their tests in the sandbox
MODEL_TASKS = [*CODE_TASKS, "humaneval-infill-single", "humaneval-infill-multi", "bpb"]
TASKS = [*MODEL_TASKS, "contamination"]


@dataclass
class EvalConfig:
    """`codelm eval`: which tasks on which checkpoint, how to sample, where to write."""

    checkpoint: str = knob("", "checkpoint, run directory, or imported model (not needed for contamination)")
    tasks: list[str] = knob(help=f"tasks to run: {', '.join(TASKS)}", factory=lambda: ["humaneval"], comma=True)
    out: str = knob("", "output directory ('': CHECKPOINT/eval)")
    n: int = knob(1, "completions per problem")
    temperature: float = knob(0.0, "sampling temperature; 0: greedy (e.g. 0.8 with n 20)")
    top_p: float = knob(0.95, "nucleus sampling when temperature > 0 (Codex's pass@k setting)")
    k: list[int] = knob(help="pass@k for these k (those <= n)", factory=lambda: [1, 10, 100], comma=True)
    limit: int = knob(0, "only the first N problems / a fixed sample of N infilling tasks (0: all)")
    few_shot: int = knob(0, "K other HumanEval problems with solutions as examples")
    chat: bool = knob(
        False, "chat prompting: the model's chat template, then the code block is extracted from the reply"
    )
    cot: bool = knob(
        False,
        "with chat: zero-shot chain of thought, a few sentences of reasoning before the code "
        "block (with uncertainty: self-consistency over behaviour clusters)",
    )
    uncertainty: bool = knob(
        False,
        "code tasks, with n >= 2 and a temperature: also the greedy answer; every program "
        "run on shared inputs and clustered by behaviour; semantic entropy, naive entropy and "
        "mean log-prob per problem, their AUROC/AURAC for predicting failure, pass@1 of the "
        "largest cluster (OUT/uncertainty.jsonl)",
    )
    behaviour_inputs: int = knob(20, "uncertainty: shared inputs per problem (the prompt's examples, then fuzzed)")
    codet: bool = knob(
        False,
        "with uncertainty: the model also writes assert tests per problem (hidden tests never "
        "shown) and CodeT's dual agreement picks one more answer",
    )
    bootstrap: int = knob(1000, "uncertainty: resamples of the problems for the 95% intervals")
    mbpp: str = knob(
        "", "task mbpp: mbpp.jsonl (full) or sanitized-mbpp.json, as published (contamination checks its items too)"
    )
    humaneval_plus: str = knob("", "task humaneval+: EvalPlus's HumanEvalPlus.jsonl(.gz), as published")
    mbpp_plus: str = knob("", "task mbpp+: EvalPlus's MbppPlus.jsonl(.gz), as published")
    max_new_tokens: int = knob(0, "0: 512 for the code tasks, 64 single-line and 256 multi-line infilling")
    repair: int = knob(0, "code tasks, n 1: rounds of self-repair; an answer that fails the examples its prompt "
                       "states gets the failure as a follow-up turn and answers again (hidden tests never shown); "
                       "reports pass@1 after each round and best of R+1 samples by the same examples")
    repair_baseline_temperature: float = knob(0.8, "repair: sampling temperature of the best-of-(R+1) baseline")
    constrain: Literal["none", "python"] = knob(
        "none", "code tasks, base prompting: python makes every completion parse (Python's compiler checks each "
        "line as it ends and the sampler backtracks); results.json reports the share that does not parse either way")
    batch_size: int = knob(16, "prompts generated together")
    seed: int = knob(0, "sampling seed")
    engine: EngineConfig = field(default_factory=EngineConfig)
    data: list[str] = knob(help="bpb: files or directories of code, or a curated corpus", factory=list)
    corpus: list[str] = knob(
        help="contamination: a `codelm curate` output or code files/directories (default: the "
        "corpus a training run's token shards came from)",
        factory=list,
    )
    contamination_threshold: float = knob(0.5, "contamination: flag an item whose longest copy covers this share of it")
    workers: int = knob(0, "parallel sandboxes (0: one per core)")

    def check(self):
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
            raise UserError(
                f"--uncertainty clusters several samples per problem: use --n 2 or more with a "
                f"temperature (e.g. --n 10 --temperature 0.8), got --n {self.n}"
            )
        if self.behaviour_inputs < 1 or self.bootstrap < 0:
            raise UserError("--behaviour-inputs must be >= 1 and --bootstrap >= 0")
        if self.uncertainty and not any(t in CODE_TASKS for t in self.tasks):
            raise UserError(f"--uncertainty needs a code task ({', '.join(CODE_TASKS)})")
        if self.repair < 0 or self.repair and (self.n != 1 or self.uncertainty):
            raise UserError(f"--repair R needs R >= 0, --n 1 and no --uncertainty (it scores one final answer per "
                            f"problem); got --repair {self.repair} --n {self.n}")
        if self.repair and self.repair_baseline_temperature <= 0:
            raise UserError("--repair's baseline samples R+1 answers: eval.repair_baseline_temperature must be > 0")
        if self.constrain == "python" and self.chat:
            raise UserError("--constrain python continues a base prompt's code; a --chat reply mixes prose and code "
                            "(use generate --chat --constrain python for a reply that is only code)")
        if self.codet and not self.uncertainty:
            raise UserError(
                "--codet picks an answer among --uncertainty's samples by the model's own tests: add "
                "--uncertainty (with --n 2 or more)"
            )
        if self.cot and not self.chat:
            raise UserError("--cot (reason, then code) is a chat prompting mode: add --chat")
        missing = [t for t, name in BENCHMARK_FILES.items() if t in self.tasks and not getattr(self, name)]
        if missing:
            raise UserError(
                "; ".join(
                    f"task {t} needs --{BENCHMARK_FILES[t].replace('_', '-')} FILE (its published "
                    "file: nothing is downloaded)"
                    for t in missing
                )
            )
        if self.temperature == 0 and self.n > 1:
            raise UserError(
                "greedy decoding (--temperature 0) gives one completion per problem: use --n 1, "
                "or a temperature such as 0.8 for pass@k with k > 1"
            )


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

    def check(self):
        if not self.train.init_from:  # with a checkpoint to start from, the recipe derives it from that model
            self.data.seq_len = self.data.seq_len or min(self.model.max_seq_len, AUTO_SEQ_LEN_CAP)


# The sections of Config each training recipe reads: its --help lists them, --set accepts them, and its
# config.toml holds them (a recipe that sizes its rows itself, as rl, dpo and reward-model do, reads no [data]).
RECIPE_SECTIONS = {
    "pretrain": ("model", "data", "optim", "train", "lora"),
    "sft": ("data", "optim", "train", "lora", "sft"),
    "distill": ("data", "optim", "train", "lora", "sft", "distill"),
    "rl": ("optim", "train", "lora", "rl"),
    "dpo": ("optim", "train", "lora", "pairs", "dpo"),
    "reward-model": ("optim", "train", "pairs"),
}
AUTO_SEQ_LEN_CAP = 1024  # data.seq_len = 0 takes the model's context up to this: longer rows are for explicit asks


def help_of(f: dataclasses.Field) -> str:
    return f.metadata.get("help", "")


def choices_of(kind) -> tuple | None:
    """The values a Literal[...] type (or Literal[...] | None) allows, else None."""
    if typing.get_origin(kind) is Literal:
        return typing.get_args(kind)
    literal = [a for a in typing.get_args(kind) if typing.get_origin(a) is Literal]
    return typing.get_args(literal[0]) if literal else None


def _check_type(key: str, value, expected):
    choices = choices_of(expected)
    if choices is not None:
        if value not in choices:
            raise UserError(f"config key '{key}' must be one of {', '.join(map(str, choices))}; got {value!r}")
        return value
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
                apply_settings(obj, item, f"{key}[{i}].")
                items.append(obj)
            return items
        return [_check_type(f"{key}[{i}]", v, item_type) for i, v in enumerate(value)]
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if expected is int and isinstance(value, bool) or not isinstance(value, expected):
        raise UserError(f"config key '{key}' expects {expected.__name__}, got {type(value).__name__} {value!r}")
    return value


def apply_settings(obj, values: dict, prefix: str = ""):
    """Set dataclass fields from a nested dict, naming the first unknown key or wrong type; returns obj."""
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
            apply_settings(current, value, f"{name}.")
        else:
            setattr(obj, key, _check_type(name, value, hints[key]))
    return obj


def parse_setting(text: str) -> dict:
    """'a.b=3' -> {'a': {'b': 3}}; the value is read as TOML, else taken as a plain string."""
    if "=" not in text:
        raise UserError(f"--set expects section.key=value, got {text!r}")
    key, raw = text.split("=", 1)
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return nested(key.strip(), value)


def nested(key: str, value) -> dict:
    """'a.b', 3 -> {'a': {'b': 3}}: one setting as apply_settings takes it."""
    *sections, name = key.split(".")
    out = node = {}
    for part in sections:
        node = node.setdefault(part, {})
    node[name] = value
    return out


def read_toml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file not found: {path}")
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"config file {path} is not valid TOML: {e}") from None


def fill(cfg, path: str | Path | None = None, overrides: list[str] = ()):
    """Fill any config dataclass from a TOML file, then `--set` overrides, then check it; returns it."""
    if path is not None:
        apply_settings(cfg, read_toml(path))
    for text in overrides:
        apply_settings(cfg, parse_setting(text))
    check(cfg)
    return cfg


def check(cfg):
    """Run every section's own check() (the rules no type can say), depth first."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        for node in value if isinstance(value, list) else [value]:
            if dataclasses.is_dataclass(node):
                check(node)
    if hasattr(cfg, "check"):
        try:
            cfg.check()
        except ValueError as e:
            raise UserError(str(e)) from None


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> Config:
    return fill(Config(), path, overrides)


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def from_dict(values: dict) -> Config:
    cfg = Config()
    apply_settings(cfg, values)
    return cfg


def toml_value(value) -> str:
    """A value as TOML writes it."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return repr(value)


def to_toml(cfg, sections: tuple[str, ...] | None = None) -> str:
    """A config as TOML that `fill` reads back to the same values: scalars first, then [sections] and
    [[lists of tables]]; `sections` keeps only those top-level sections."""

    def table(obj, name: str, header: str) -> list[str]:
        scalars, nested = [], []
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            key = f"{name}.{f.name}" if name else f.name
            if not (name or sections is None or f.name in sections):
                continue
            if dataclasses.is_dataclass(value):
                nested += table(value, key, f"[{key}]")
            elif value and isinstance(value, list) and dataclasses.is_dataclass(value[0]):
                for item in value:
                    nested += table(item, key, f"[[{key}]]")
            else:
                scalars.append(f"{f.name} = {toml_value(value)}")
        head = [header] if header else []
        return [*head, *scalars, ""] * bool(scalars or header) + nested

    return "\n".join(table(cfg, "", "")).strip() + "\n"
