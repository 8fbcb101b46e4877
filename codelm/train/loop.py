"""The one training loop, shared by every recipe that updates weights.

A recipe (pretrain.py, sft.py, ...) supplies a model, a BatchStream and an
Objective. The loop owns everything else: device and precision (bf16 autocast
over fp32 master weights, or fp32), gradient accumulation to a global batch in
tokens, AdamW or Muon, warmup then cosine or warmup-stable-decay, clipping,
periodic validation, metrics.jsonl, progress lines with tokens/s and MFU,
checkpoints, SIGINT/SIGTERM, exact resume, time budgets, and DDP or FSDP when
launched by torchrun (parallel.py; the model code knows nothing of it).
"""

import math
import os
import signal
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn

from codelm import checkpoint as ckpt
from codelm.config import AUTO_SEQ_LEN_CAP, RECIPE_SECTIONS, Config, ModelConfig, OptimConfig, to_dict, to_toml
from codelm.errors import UserError
from codelm.io import atomic_write_text
from codelm.model.llama import Transformer
from codelm.model.lora import LoraSpec, apply_lora
from codelm.precision import (
    PrecisionChoice,
    autocast_context,
    choose_precision,
    peak_flops,
)
from codelm.train import metrics
from codelm.train.muon import MuonAdamW
from codelm.train.parallel import Replicated, data_parallel
from codelm.train.validation import HeldOut

EARLY_LOG_STEPS = (1, 2, 5, 10)  # logged whatever log_every says, so a run shows it is alive within seconds


class BatchStream(Protocol):
    """Where a recipe's micro batches come from: endless, each of train.micro_batch rows of data.seq_len
    tokens (this process's share), and resumable: the loop saves state_dict in every checkpoint."""

    def next_batch(self) -> Any: ...  # with .to(device)

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


class Objective(Protocol):
    """What a recipe minimises. units(batch) counts what the loss sums over (target tokens, pairs), so that
    a step's loss is the mean over all the units of its micro batches, however unevenly they are spread
    (a mean per micro batch would weigh a micro batch with few targets like a full one). Calling it gives
    the loss summed over the batch's units and metrics summed the same way (the loop logs their means)."""

    def units(self, batch) -> int: ...

    def __call__(self, model: nn.Module, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]: ...


@dataclass
class DistEnv:
    rank: int
    world: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_distributed(device: str = "auto") -> DistEnv:
    """Single process, or one rank of a torchrun launch (gloo on CPU, NCCL on CUDA)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda" and world > 1:
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return DistEnv(rank, world, dev)


def adopt_model_config(cfg: Config, model: ModelConfig):
    """The checkpoint's shape replaces [model]; data.seq_len = 0 becomes the context it allows (said once)."""
    cfg.model = model
    if not cfg.data.seq_len:
        cfg.data.seq_len = min(model.max_seq_len, AUTO_SEQ_LEN_CAP)
        if int(os.environ.get("RANK", 0)) == 0:
            print(f"data.seq_len = {cfg.data.seq_len}: the checkpoint's context ({model.max_seq_len} tokens), at most "
                  f"{AUTO_SEQ_LEN_CAP}; set data.seq_len to choose", flush=True)


def start_from(cfg: Config, recipe: str, run_dir: bool = True):
    """(model in train mode, tokenizer, checkpoint) of train.init_from for a recipe that adapts a trained model,
    seeded by train.seed; cfg.model becomes the checkpoint's shape and the run directory exists."""
    t = cfg.train
    if not t.init_from:
        raise UserError(f"{recipe} starts from a trained model: give --init-from CHECKPOINT (train.init_from)")
    torch.manual_seed(t.seed)
    model, tok, source = ckpt.load_model(t.init_from)
    adopt_model_config(cfg, model.config)
    if run_dir:
        Path(t.out_dir).mkdir(parents=True, exist_ok=True)
    return model.train(), tok, source


def probe_step(model: Transformer, rows: int, seq_len: int, device: torch.device, precision: str):
    """A forward+backward step on random ids of (rows, seq_len), ready to time: what training spends its time on."""
    ids = torch.randint(0, model.config.vocab_size, (rows, seq_len + 1), device=device)

    def step():
        with autocast_context(device, precision):
            loss = model.loss(ids[:, :-1], ids[:, 1:])
        loss.backward()
        model.zero_grad(set_to_none=True)

    return step


def resolve_precision(requested: str, model: Transformer, seq_len: int, device: torch.device,
                      log=print) -> PrecisionChoice:
    """The training precision: `requested`, or with "auto" the fastest forward+backward micro-step here."""
    tokens = min(seq_len, 128)  # the model's own widths; few tokens, so a slow kernel costs seconds, not minutes

    def make_step(precision: str):
        return probe_step(model, 1, tokens, device, precision)

    c = model.config
    shape = f"d{c.dim} L{c.n_layers} h{c.n_heads}/{c.n_kv_heads} f{c.hidden_dim} v{c.vocab_size} T{tokens}"
    return choose_precision(requested, device, "train", shape, make_step, training=True, log=log)


def accumulation_steps(cfg: Config, world: int) -> int:
    """Micro batches per optimizer step so that a step sees train.batch_tokens over all processes."""
    tokens_per_micro = cfg.train.micro_batch * world * cfg.data.seq_len
    batch_tokens = cfg.train.batch_tokens or tokens_per_micro
    if batch_tokens % tokens_per_micro:
        raise UserError(
            f"train.batch_tokens={batch_tokens} is not a multiple of micro_batch * seq_len * processes = "
            f"{tokens_per_micro}"
        )
    return batch_tokens // tokens_per_micro


def learning_rate(step: int, max_steps: int, o: OptimConfig) -> float:
    """LR for the update with 0-based index `step`: linear warmup, then cosine or warmup-stable-decay."""
    floor = o.lr * o.min_lr_ratio
    if step < o.warmup_steps:
        return o.lr * (step + 1) / o.warmup_steps
    if o.schedule == "cosine":
        progress = min(1.0, (step - o.warmup_steps) / max(1, max_steps - o.warmup_steps))
        return floor + (o.lr - floor) * 0.5 * (1 + math.cos(math.pi * progress))
    start = decay_start(max_steps, o)
    if step < start:
        return o.lr
    progress = min(1.0, (step - start + 1) / max(1, max_steps - start))
    return o.lr + (floor - o.lr) * progress


def decay_start(max_steps: int, o: OptimConfig) -> int:
    """The first step whose LR depends on max_steps: before it, a time-budgeted run may still change its length."""
    if o.schedule == "cosine":
        return o.warmup_steps
    return max(o.warmup_steps, int(max_steps * (1 - o.decay_frac)))


def budget_steps(step: int, seconds_left: float, per_step: float, o: OptimConfig) -> int:
    """The run's length when `seconds_left` of the time budget remain at `per_step` seconds a step, never so short
    that the LR decay should already have started before `step`."""
    total = step + max(1, int(seconds_left / per_step))
    if o.schedule == "wsd" and o.decay_frac < 1:
        total = max(total, math.ceil(step / (1 - o.decay_frac)))
    return total


def build_optimizer(model: nn.Module, o: OptimConfig, device: torch.device) -> torch.optim.Optimizer:
    """AdamW (weight decay on weight matrices only, none on norms and embeddings), or with optim.name = "muon"
    Muon for the hidden matrices. Each group's `lr_scale` is its peak learning rate relative to optim.lr."""
    hidden, head, embed, norms = [], [], [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if "embed" in name:
            embed.append(p)
        elif p.ndim < 2:
            norms.append(p)
        else:
            (head if "lm_head" in name else hidden).append(p)
    embed_group = {"params": embed, "weight_decay": 0.0, "lr_scale": (o.embed_lr or o.lr) / o.lr}
    if o.name == "muon":
        groups = [{"params": hidden, "weight_decay": o.weight_decay, "use_muon": True, "lr_scale": o.muon_lr / o.lr,
                   "momentum": o.muon_momentum},
                  {"params": head, "weight_decay": o.weight_decay, "lr_scale": 1.0},
                  {"params": norms, "weight_decay": 0.0, "lr_scale": 1.0}, embed_group]
        return MuonAdamW(groups, lr=o.lr, betas=(o.beta1, o.beta2), eps=o.eps)
    groups = [{"params": hidden + head, "weight_decay": o.weight_decay, "lr_scale": 1.0},
              {"params": norms, "weight_decay": 0.0, "lr_scale": 1.0}, embed_group]
    return torch.optim.AdamW(groups, lr=o.lr, betas=(o.beta1, o.beta2), eps=o.eps, fused=device.type in ("cpu", "cuda"))


class StageLoss(nn.Module):
    """A recipe's objective as a module: DDP, FSDP and torch.compile wrap a module's forward, so the whole loss
    must be one (a call to Transformer.loss through a wrapper would bypass the wrapper)."""

    def __init__(self, model: Transformer, objective: Objective):
        super().__init__()
        self.model, self.objective = model, objective

    def forward(self, batch):
        return self.objective(self.model, batch)


@dataclass
class StepResult:
    loss: float  # mean per unit over every process's micro batches
    grad_norm: float  # before clipping
    metrics: dict[str, float]  # the objective's metrics, means per unit
    tokens: int  # input positions the step computed, padding included, over all processes (throughput, MFU)


def train_step(step_loss: StageLoss | nn.Module, objective: Objective, optimizer, stream: BatchStream, autocast,
               accum: int, grad_clip: float, env: DistEnv, parallel: Replicated | None = None) -> StepResult:
    """One optimizer step over `accum` micro batches (step_loss is the StageLoss, maybe wrapped by DDP, sharded by
    FSDP, or compiled); the gradient is that of the mean loss over all units of the step on all processes."""
    parallel = parallel or Replicated(env.world)
    device = env.device
    batches = [stream.next_batch().to(device) for _ in range(accum)]
    units = _all_reduce(float(sum(objective.units(b) for b in batches)), env)
    scale = env.world / max(units, 1.0)  # DDP and FSDP average gradients over processes: undo that for a global mean
    loss_sum, metric_sums = 0.0, {}
    for micro, batch in enumerate(batches):
        with parallel.gradient_sync(step_loss, sync=micro == accum - 1):  # gradients cross processes once a step
            with autocast:
                loss, metrics_ = step_loss(batch)
            (loss * scale).backward()
        loss_sum += float(loss.detach())
        for name, value in metrics_.items():
            metric_sums[name] = metric_sums.get(name, 0.0) + float(value.detach())
    params = [p for group in optimizer.param_groups for p in group["params"]]
    norm = parallel.grad_norm(params)
    if grad_clip > 0:
        nn.utils.clip_grads_with_norm_(params, grad_clip, norm)
    grad_norm = float(norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)

    def mean(total: float) -> float:
        return _all_reduce(total, env) / max(units, 1.0)

    tokens = int(_all_reduce(float(sum(b.inputs.numel() for b in batches)), env))
    return StepResult(mean(loss_sum), grad_norm, {name: mean(v) for name, v in sorted(metric_sums.items())}, tokens)


class StopSignal:
    """SIGINT/SIGTERM ask the loop to checkpoint and stop after the current step."""

    def __init__(self):
        self.requested = False
        self.previous = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested:  # a second signal: stop now
            raise KeyboardInterrupt
        self.requested = True
        print(f"\nreceived {signal.Signals(signum).name}: saving a checkpoint after this step", flush=True)

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def _all_reduce(value: float, env: DistEnv, op=None) -> float:
    if env.world == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=env.device)
    dist.all_reduce(t, op=op or dist.ReduceOp.SUM)
    return float(t.item())



def _format_duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 60}m{seconds % 60:02d}s"


def train(
    cfg: Config,
    env: DistEnv,
    model: Transformer,
    stream: BatchStream,
    objective: Objective,
    validate_fn: Callable[[Transformer, int | None, object], HeldOut] | None,
    tokenizer_path: Path,
    resume: bool = False,
    shardable: bool = False,
    recipe: str = "pretrain",
) -> dict:
    """Train until max_steps (or the time budget), then validate and checkpoint. Returns the final metrics.

    recipe: names the config sections written to config.toml (RECIPE_SECTIONS).
    shardable: the recipe uses the model only in the loop's steps and validation, so FSDP may shard it (a
    recipe that samples from it between steps, or evaluates it afterwards, needs whole weights there)."""
    t = cfg.train
    run_dir = Path(t.out_dir)
    ckpt_root = run_dir / "checkpoints"
    metrics_path = run_dir / "metrics.jsonl"
    device = env.device
    if cfg.data.seq_len > model.config.max_seq_len:
        raise UserError(f"data.seq_len={cfg.data.seq_len} is longer than the model's context "
                        f"({model.config.max_seq_len} tokens)")

    base_model = ckpt.resolve_checkpoint(t.init_from) if t.init_from else None
    if cfg.lora.r:  # before the optimizer, which then holds only the adapters
        if base_model is None:
            raise UserError("LoRA adapts a trained model: set train.init_from (--init-from) to its checkpoint")
        targets = apply_lora(model, LoraSpec.from_config(cfg.lora))
        if env.is_main:
            trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
            print(f"LoRA r={cfg.lora.r} alpha={cfg.lora.alpha:g}{' (rsLoRA)' if cfg.lora.rslora else ''} on "
                  f"{len(targets)} layers: {trainable:,} trainable parameters of {model.num_params():,}", flush=True)
    raw_model = model.to(device)
    parallel = data_parallel(t.parallel, env.world, {"LoRA (lora.r > 0)": cfg.lora.r > 0,
                                                     "this recipe (only pretrain and sft)": not shardable})
    accum = accumulation_steps(cfg, env.world)
    batch_tokens = accum * t.micro_batch * env.world * cfg.data.seq_len
    step, max_steps, elapsed_before = 0, t.max_steps, 0.0
    if resume:
        found = ckpt.latest_checkpoint(ckpt_root)
        if found is None:
            raise UserError(f"--resume: no checkpoint in {ckpt_root}")
        ckpt.load_weights(raw_model, found)  # whole weights, before sharding
        state = ckpt.load_training_state(found)
        step, max_steps, elapsed_before = state["step"], state["max_steps"], state["elapsed"]
        stream.load_state_dict(state["loader"])
        ckpt.set_rng_state(state["rng"])
        if env.is_main:
            metrics.truncate_metrics(metrics_path, step)
            print(f"resuming from {found} at step {step}/{max_steps}", flush=True)
    elif not (t.max_steps or t.max_minutes):
        raise UserError("set train.max_steps or train.max_minutes")

    if env.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / "config.toml", to_toml(cfg, RECIPE_SECTIONS[recipe]))

    log_main = print if env.is_main else (lambda *a, **k: None)
    choice = resolve_precision(t.precision, raw_model, cfg.data.seq_len, device, log_main)
    peak = peak_flops(device, choice.precision) * env.world  # MFU against the precision actually used
    autocast = autocast_context(device, choice.precision)
    flops_per_token = raw_model.flops_per_token(cfg.data.seq_len, frozen_weights=cfg.lora.r > 0)
    if env.is_main:
        replace(choice, peak_flops=peak).save(run_dir / "precision.json")
        print(
            f"model: {raw_model.num_params() / 1e6:.2f}M parameters, {flops_per_token / 1e6:.1f} MFLOP/token | "
            f"batch {batch_tokens} tokens = {accum} x {env.world} x {t.micro_batch} x {cfg.data.seq_len} | "
            f"{choice.describe()} on {device}, peak {peak / 1e12:.3f} TFLOP/s measured in {choice.precision}",
            flush=True,
        )

    step_loss = parallel.wrap(StageLoss(raw_model, objective), device)
    optimizer = build_optimizer(raw_model, cfg.optim, device)  # after sharding: FSDP replaces the parameters
    if resume:
        parallel.load_optimizer_state(raw_model, optimizer, ckpt.load_optimizer_state(found))
    if t.compile:
        log_main("compiling the model (torch.compile): the first steps take longer", flush=True)
        step_loss = torch.compile(step_loss)

    def save(reason: str):
        weights, optimizer_state = parallel.full_state(raw_model, optimizer)  # every process takes part
        if env.is_main:
            state = {
                "max_steps": max_steps,
                "elapsed": elapsed_before + train_seconds,
                "loader": stream.state_dict(),
                "rng": ckpt.rng_state(),
                "reason": reason,
                "config": to_dict(cfg),
            }
            path = ckpt.save_checkpoint(ckpt_root, step, raw_model, tokenizer_path, state, optimizer_state,
                                        t.keep_checkpoints, base_model, weights)
            print(f"checkpoint: {path}", flush=True)
        if env.world > 1:
            dist.barrier()

    def log(point: metrics.TrainPoint | metrics.ValPoint):
        if env.is_main:
            metrics.append(metrics_path, point)

    def validate(max_tokens: int | None) -> HeldOut | None:
        """Every process measures its share of the batches (validation.py); the first one records the totals."""
        result = validate_fn(raw_model, max_tokens, autocast) if validate_fn else None
        return result if env.is_main else None

    train_seconds, start_step = 0.0, step
    window_seconds, window_tokens = 0.0, 0  # step time only: evaluation and checkpoints are not throughput
    step_times: list[float] = []
    time_budget = bool(t.max_minutes) and not t.max_steps
    with StopSignal() as stop:
        while max_steps == 0 or step < max_steps:
            step_start = time.perf_counter()
            lr = learning_rate(step, max_steps or 10**9, cfg.optim)
            for group in optimizer.param_groups:
                group["lr"] = lr * group["lr_scale"]
            result = train_step(step_loss, objective, optimizer, stream, autocast, accum, cfg.optim.grad_clip, env,
                                parallel)
            step += 1
            loss_avg = result.loss
            if device.type == "cuda":
                torch.cuda.synchronize()
            dt = time.perf_counter() - step_start
            train_seconds += dt
            window_seconds += dt
            window_tokens += result.tokens  # what was computed: below batch_tokens when rows are shorter (RL, DPO)

            if time_budget:  # time the steady steps, fix the length, and re-fix it while the LR is still flat
                step_times.append(dt)
                budget = t.max_minutes * 60 - elapsed_before
                timed = len(step_times) >= 30 or (len(step_times) >= 3 and train_seconds > budget / 4)
                first = max_steps == 0 and timed
                again = (max_steps and len(step_times) >= 30 and step % t.log_every == 0
                         and step < decay_start(max_steps, cfg.optim))
                if first or again:
                    per_step = float(np.median(step_times[len(step_times) // 3 :][-100:]))  # past compile; recent
                    planned = budget_steps(step, budget - train_seconds, per_step, cfg.optim)
                    planned = int(_all_reduce(planned, env, dist.ReduceOp.MIN))
                    if env.is_main and (first or abs(planned - max_steps) > 0.02 * max_steps):
                        pace = "slower" if planned < max_steps else "faster"
                        change = "" if first else f" (was {max_steps}: steps {pace})"
                        print(f"time budget {t.max_minutes:g} min at {per_step:.2f} s/step: {planned} steps{change}",
                              flush=True)
                    max_steps = planned

            record = metrics.TrainPoint(step=step, loss=loss_avg, lr=lr, grad_norm=result.grad_norm,
                                        tokens=step * batch_tokens, metrics=result.metrics or None)
            if step % t.log_every == 0 or step == max_steps or step in EARLY_LOG_STEPS:
                tok_s = window_tokens / window_seconds
                record.tok_s, record.mfu = tok_s, tok_s * flops_per_token / peak
                record.elapsed = elapsed_before + train_seconds
                if env.is_main:
                    left = (f"~{_format_duration((max_steps - step) * train_seconds / max(1, step - start_step))} left"
                            if max_steps else "timing steps to fix the schedule")
                    print(
                        f"step {step:5d}/{max_steps or '?'} | loss {loss_avg:.4f} | "
                        + "".join(f"{name} {value:.4f} | " for name, value in result.metrics.items())
                        + f"lr {lr:.2e} | "
                        f"{tok_s:,.0f} tok/s | MFU {100 * record.mfu:.1f}% | "
                        f"{_format_duration(elapsed_before + train_seconds)} elapsed, {left}",
                        flush=True,
                    )
                window_seconds, window_tokens = 0.0, 0
            log(record)

            if not math.isfinite(loss_avg):
                last = ckpt.latest_checkpoint(ckpt_root)
                raise UserError(f"loss is {loss_avg} at step {step}: lower optim.lr or check the data"
                                + (f" (the last good checkpoint is {last})" if last else ""))
            finished = max_steps and step >= max_steps
            if t.eval_every and step % t.eval_every == 0 and not finished:
                result = validate(t.eval_tokens)
                if result:
                    log(metrics.ValPoint.of(step, result))
                    print(f"step {step:5d} | val loss {result.loss:.4f} | val bpb {result.bpb:.4f}", flush=True)
            stop_now = _all_reduce(float(stop.requested), env) > 0
            if stop_now:
                save("signal")
                return {"step": step, "stopped": True}
            if t.ckpt_every and step % t.ckpt_every == 0 and not finished:
                save("periodic")

    if t.eval_every:  # the curve's last point, on the same subset as the periodic ones
        result = validate(t.eval_tokens)
        if result:
            log(metrics.ValPoint.of(step, result))
    final = validate(None)
    if final:
        log(metrics.ValPoint.of(step, final, final=True))
        print(f"final | val loss {final.loss:.4f} | val bpb {final.bpb:.4f} | {final.tokens:,} tokens", flush=True)
    save("final")
    return {"step": step, "stopped": False, "train_seconds": elapsed_before + train_seconds,
            **(asdict(final) if final else {})}
