"""`codelm scaling sweep`: an IsoFLOP grid trained with the shared trainer, each run to its FLOPs budget.

Model sizes come from one knob, depth: layers = heads = depth and width = aspect x depth, so one number orders
the family. A run's length is its budget divided by its exact FLOPs per token (codelm.scaling.flops), in whole
optimizer steps. Each run is an ordinary pretraining run in OUT/runs/NAME (its config.toml is the whole plan),
so a finished run is skipped, an interrupted one resumes from its checkpoint, and on a cluster each can be
launched as its own `codelm pretrain` (--emit-commands). The table is rewritten after every run.
"""

import copy
import sys
from dataclasses import replace
from pathlib import Path

from codelm import checkpoint as ckpt
from codelm.config import RECIPE_SECTIONS, Config, ModelConfig, load_config, to_toml
from codelm.errors import UserError
from codelm.io import atomic_write_text
from codelm.scaling.config import TRAINING_CONFIG, SweepConfig
from codelm.scaling.flops import counts
from codelm.scaling.results import Run, conventions_text, write_table
from codelm.tokenizer import Tokenizer
from codelm.train import metrics
from codelm.train.loop import accumulation_steps
from codelm.train.pretrain import pretrain

WARMUP_SHARE = 0.1  # a run warms up for at most this share of its steps (Porian et al. 2024: a fixed long
# warmup handicaps the short runs of small models and biases the fit)
SWEEP_SETTINGS = ["train.compile=false", "train.max_minutes=0.0", "train.eval_every=0"]  # before --set


def family(depth: int, aspect: int, base: ModelConfig) -> ModelConfig:
    """The model of the family at this depth; everything but the shape (vocabulary, QK-norm, ...) from base."""
    return replace(base, n_layers=depth, dim=aspect * depth, n_heads=depth, n_kv_heads=depth, ffn_dim=0)


def base_config(cfg: SweepConfig) -> Config:
    """The training settings every run shares: the config file, the sweep's settings, --set; the tokenizer's
    vocabulary."""
    tokens = Path(cfg.tokens)
    if not (tokens / "tokenizer.json").is_file():
        raise UserError(f"--tokens {tokens}: no tokenizer.json there; give a `codelm tokenize` output directory")
    base = load_config(cfg.config or TRAINING_CONFIG, [*SWEEP_SETTINGS, f"data.tokens={str(tokens)!r}", *cfg.overrides])
    base.model.vocab_size = Tokenizer.load(tokens / "tokenizer.json").vocab_size
    base.model.max_seq_len = base.data.seq_len
    return base


def plan_grid(cfg: SweepConfig, base: Config) -> list[tuple[Run, Config]]:
    """Every budget x depth with at least min_steps steps; a budget left with fewer than 3 sizes is an error,
    since its curve needs 3 points for a minimum."""
    batch_tokens = accumulation_steps(base, 1) * base.train.micro_batch * base.data.seq_len
    grid, short = [], []
    for budget in sorted(cfg.budgets):
        row = []
        for depth in sorted(cfg.depths):
            model = family(depth, cfg.aspect, base.model)
            n = counts(model, base.data.seq_len)
            steps = round(budget / (n.flops_per_token * batch_tokens))
            if steps < cfg.min_steps:
                continue
            name = f"C{budget:.3g}-d{depth}".replace("+", "")
            run_cfg = copy.deepcopy(base)
            run_cfg.model = model
            run_cfg.train.out_dir = str(Path(cfg.out) / "runs" / name)
            run_cfg.train.max_steps = steps
            run_cfg.optim.warmup_steps = max(1, min(base.optim.warmup_steps, int(WARMUP_SHARE * steps)))
            tokens = steps * batch_tokens
            row.append((Run(name, budget, depth, model.n_layers, model.dim, model.n_heads, n.total, n.non_embedding,
                            n.matmul, n.flops_per_token, steps, tokens, float(tokens * n.flops_per_token)), run_cfg))
        if len(row) < 3:
            short.append(f"{budget:.3g} FLOPs gives {len(row)} ({', '.join(r.name for r, _ in row) or 'none'})")
        grid += row
    if short:
        raise UserError(f"the grid cannot fit the budget: each budget needs 3 depths of at least {cfg.min_steps} "
                        f"steps of {batch_tokens} tokens, and {'; '.join(short)}: raise those budgets or add "
                        "smaller depths")
    return grid


def finished(run: Run, run_cfg: Config) -> Run | None:
    """The run with its final validation, if OUT/runs/NAME holds a finished run of exactly this plan."""
    run_dir = Path(run_cfg.train.out_dir)
    recorded = run_dir / "config.toml"
    if recorded.is_file() and recorded.read_text() != to_toml(run_cfg, RECIPE_SECTIONS["pretrain"]):
        raise UserError(f"{run_dir} was trained with other settings than this sweep plans: use another --out, "
                        "or remove that run")
    if not (run_dir / "metrics.jsonl").is_file():
        return None
    train_points, val_points = metrics.read_metrics(run_dir / "metrics.jsonl")
    final = [v for v in val_points if v.final]
    if not final:
        return None
    return replace(run, status="done", val_loss=final[-1].loss, val_bpb=final[-1].bpb,
                   train_seconds=train_points[-1].elapsed or float("nan"))


def card(cfg: SweepConfig, base: Config) -> str:
    """What the table's numbers mean: corpus, family, training settings and conventions."""
    return "\n".join([
        "# IsoFLOP sweep", "",
        f"- corpus: `{cfg.tokens}` (validation loss: nats per token on its whole validation split; bits per byte "
        "beside it)",
        f"- family: depth d gives d layers of width {cfg.aspect}·d with d heads of {cfg.aspect} (no grouped "
        f"key/values), vocabulary {base.model.vocab_size}, context {base.data.seq_len}, QK-norm "
        f"{base.model.qk_norm}, tied embeddings {base.model.tie_embeddings}",
        f"- training: `{cfg.config or TRAINING_CONFIG.name}` with {', '.join(SWEEP_SETTINGS + cfg.overrides)}; "
        f"optimizer {base.optim.name}, "
        f"{base.optim.schedule} schedule to each run's own length, warmup min({base.optim.warmup_steps}, "
        f"{WARMUP_SHARE:g} x steps), batches of {base.train.batch_tokens or 'one micro batch of'} tokens",
        f"- a run's steps: budget / (exact FLOPs per token x batch tokens), rounded; runs under {cfg.min_steps} "
        "steps are left out",
        conventions_text(),
    ])


def run_sweep(cfg: SweepConfig, log=print) -> list[Run]:
    """Train every pending run of the grid (or print their commands); returns the table as it stands."""
    out = Path(cfg.out)
    base = base_config(cfg)
    grid = plan_grid(cfg, base)
    out.mkdir(parents=True, exist_ok=True)
    runs = [finished(run, run_cfg) or run for run, run_cfg in grid]
    todo = [(i, run_cfg) for i, (run, run_cfg) in enumerate(grid) if runs[i].status != "done"]
    log(f"sweep: {len(grid)} runs, {len(grid) - len(todo)} already done", file=sys.stderr, flush=True)
    for i, run_cfg in todo:
        run_dir = Path(run_cfg.train.out_dir)
        resume = ckpt.latest_checkpoint(run_dir / "checkpoints") is not None
        if cfg.emit_commands:
            run_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(run_dir / "config.toml", to_toml(run_cfg, RECIPE_SECTIONS["pretrain"]))
            log(f"codelm pretrain --config {run_dir / 'config.toml'}{' --resume' if resume else ''}")
            continue
        run = runs[i]
        log(f"sweep: run {i + 1}/{len(grid)} {run.name}: {run.params_total / 1e6:.2f}M parameters "
            f"({run.params_non_embedding / 1e6:.2f}M non-embedding), {run.steps} steps, {run.tokens / 1e6:.2f}M "
            f"tokens{', resuming' if resume else ''}", file=sys.stderr, flush=True)
        if not resume:
            (run_dir / "metrics.jsonl").unlink(missing_ok=True)  # a start that died before its first checkpoint
        stopped = pretrain(run_cfg, resume=resume).get("stopped")
        runs[i] = finished(run, run_cfg) or run
        write_table(out, runs, card(cfg, base))
        if stopped:  # Ctrl-C or SIGTERM means the sweep, not just the run in progress
            log(f"sweep: stopped by signal in {run.name} (checkpointed); rerun the same command to resume",
                file=sys.stderr, flush=True)
            return runs
    write_table(out, runs, card(cfg, base))
    return runs
