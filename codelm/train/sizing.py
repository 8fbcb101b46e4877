"""Size the model for the machine: the speedrun's shape from measured throughput and a time budget.

A fixed 10-minute budget buys ~4M tokens on a CPU with fast bf16 (AMX) and ~1.6M
on an AVX2-only one running fp32. A model sized for one is wrong for the other:
too big and it sees too few tokens per parameter, too small and it stops
improving early. So the speedrun times one training micro-step of each shape on
a ladder in the precision that will run, predicts the tokens each would see in
the budget, and takes the largest shape that still gets at least
TOKENS_PER_PARAM tokens per non-embedding parameter: the ratio at which the
budget sweeps (docs/results/speedrun.md, "Quality at fixed compute") found the best bits per byte.
Throughputs are cached per machine like the precision probe.
"""

from dataclasses import dataclass

import torch

from codelm.config import LADDER, Config, ModelConfig, Shape
from codelm.model.llama import Transformer
from codelm.precision import cached_measurement, time_step
from codelm.train.loop import probe_step

# The low end of the broad optimum the AVX2 fp32 budget sweeps found (docs/results/speedrun.md), in tokens per
# parameter counted as this module predicts them: the probe's tokens/s x budget x BUDGET_USE.
TOKENS_PER_PARAM = 2.5
PROBE_ROWS = 4  # rows of the timed step: wide enough for full-speed kernels, short enough for a slow machine
BUDGET_USE = 0.85  # share of the budget spent on steady steps (the rest: compilation, warm-up)


@dataclass
class Candidate:
    shape: Shape
    params: int  # non-embedding
    tokens_per_second: float
    budget_tokens: float


def step_tokens_per_second(model_cfg: ModelConfig, cfg: Config, device: torch.device, precision: str) -> float:
    """Tokens/s of a forward+backward step of a fresh model on PROBE_ROWS x seq_len tokens, cached per machine."""
    rows = min(PROBE_ROWS, cfg.train.micro_batch)

    def measure() -> float:
        step = probe_step(Transformer(model_cfg).to(device), rows, cfg.data.seq_len, device, precision)
        step()  # the first calls of a new shape pick kernels and allocate: 2-4x slower
        return rows * cfg.data.seq_len / time_step(step, device, seconds=1.5)

    c = model_cfg
    shape = f"{precision} d{c.dim} L{c.n_layers} h{c.n_heads}/{c.n_kv_heads} v{c.vocab_size} {rows}x{cfg.data.seq_len}"
    value, _ = cached_measurement("train-step", device, shape, measure)
    return float(value)


def non_embedding_params(c: ModelConfig) -> int:
    """Weights of the layers and final norm: what the tokens-per-parameter rule counts (embeddings and head
    excluded)."""
    attention = c.dim * c.head_dim * (2 * c.n_heads + 2 * c.n_kv_heads) + 2 * c.head_dim * c.qk_norm
    return c.n_layers * (attention + 3 * c.dim * c.hidden_dim + 2 * c.dim) + c.dim


def plan_shape(cfg: Config, device: torch.device, precision: str, budget_seconds: float = 0.0,
               budget_steps: int = 0, log=print) -> tuple[Shape, list[Candidate]]:
    """The largest ladder shape with budget_tokens >= TOKENS_PER_PARAM * non-embedding params (else the smallest).

    A time budget is turned into tokens by timing each shape; a step budget needs no timing."""
    step_tokens = cfg.train.batch_tokens or cfg.train.micro_batch * cfg.data.seq_len
    if not budget_steps:
        log(f"sizing the model for {budget_seconds / 60:g} minutes in {precision}: timing {len(LADDER)} shapes "
            "(once per machine)...", flush=True)
    candidates = []
    for shape in LADDER:
        model_cfg = shape.model_config(cfg.model)
        if budget_steps:
            tok_s, tokens = 0.0, float(budget_steps * step_tokens)
        else:
            tok_s = step_tokens_per_second(model_cfg, cfg, device, precision)
            tokens = tok_s * budget_seconds * BUDGET_USE
        candidates.append(Candidate(shape, non_embedding_params(model_cfg), tok_s, tokens))
    fitting = [c for c in candidates if c.budget_tokens >= TOKENS_PER_PARAM * c.params]
    return (fitting[-1] if fitting else candidates[0]).shape, candidates


def plan_text(chosen: Shape, candidates: list[Candidate], machine: str, precision: str) -> str:
    """The sizing decision as the report shows it: every candidate, and why this one."""
    lines = [f"Machine: {machine}; training precision {precision}. Rule: the largest shape that sees at least "
             f"{TOKENS_PER_PARAM:g} tokens per non-embedding parameter in the budget.", "",
             "| shape | non-embedding parameters | measured tokens/s | tokens in budget | tokens per parameter | |",
             "|---|---:|---:|---:|---:|---|"]
    for c in candidates:
        tok_s = f"{c.tokens_per_second:,.0f}" if c.tokens_per_second else "- (step budget)"
        lines.append(f"| {c.shape.name} | {c.params / 1e6:.2f}M | {tok_s} | {c.budget_tokens / 1e6:.2f}M | "
                     f"{c.budget_tokens / c.params:.2f} | {'**chosen**' if c.shape == chosen else ''} |")
    return "\n".join(lines)
