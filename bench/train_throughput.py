"""Training throughput (tokens/s) and MFU on this machine, for the tiny config and a reference shape.

Runs the training loop's own `train_step` (packing loader with document masks,
AdamW, clipping) on synthetic documents, in fp32 and bf16 autocast, eager and
torch.compile'd, and prints a table beside a nanoGPT-style model of the
reference shape run the same way, so the comparison is made in one run on one
machine. Only the precisions usable here run: bf16 is skipped where the
precision probe finds it more than 2x slower than fp32 (AVX2-only CPUs, where a
bf16 row would take minutes); `--precisions` forces a list. MFU is relative to
the matmul peak measured in the row's own precision.

    .venv/bin/python bench/train_throughput.py [--steps 8] [--micro-batch 16] [--no-compile] [--precisions fp32,bf16]
"""

import argparse
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from codelm.config import ModelConfig, load_config
from codelm.data.loader import PackedLoader
from codelm.model.llama import Transformer
from codelm.precision import SLOW_FACTOR, autocast_context, device_name, peak_flops
from codelm.speedrun import DEFAULT_CONFIG
from codelm.train.loop import DistEnv, StageLoss, build_optimizer, resolve_precision, train_step
from codelm.train.objectives import NextToken

REFERENCE = ModelConfig(vocab_size=8192, dim=384, n_layers=6, n_heads=6, n_kv_heads=6, max_seq_len=256)


class NanoGPTBlock(nn.Module):
    """nanoGPT's block (LayerNorm, causal SDPA, 4x GELU MLP), for a baseline measured in the same run."""

    def __init__(self, dim, n_heads):
        super().__init__()
        self.n_heads = n_heads
        self.ln_1, self.ln_2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.c_attn, self.c_proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.c_fc, self.mlp_proj = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = (t.view(B, T, self.n_heads, -1).transpose(1, 2) for t in self.c_attn(self.ln_1(x)).split(C, dim=2))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T, C)
        x = x + self.c_proj(y)
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x))))


class NanoGPT(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(cfg.vocab_size, cfg.dim), nn.Embedding(cfg.max_seq_len, cfg.dim)
        self.blocks = nn.ModuleList(NanoGPTBlock(cfg.dim, cfg.n_heads) for _ in range(cfg.n_layers))
        self.ln_f = nn.LayerNorm(cfg.dim)
        self.lm_head = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # tied, as in nanoGPT

    def loss(self, idx, targets, doc_ids=None):  # nanoGPT has no document masking
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1]))
        for block in self.blocks:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))
        return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-100)

    def flops_per_token(self, seq_len):
        c = self.wte.weight.shape[1]
        n = sum(p.numel() for p in self.parameters()) - self.wpe.weight.numel()
        return 6 * n + 12 * len(self.blocks) * c * seq_len


def synthetic_docs(vocab_size: int, n: int = 400, seed: int = 0):
    """Documents with the length spread of source files (a few hundred to a few thousand tokens)."""
    rng = np.random.default_rng(seed)
    return [rng.integers(1, vocab_size, size=int(rng.lognormal(7.0, 1.0)) + 8) for _ in range(n)]


def measure(shape: ModelConfig, precision: str, compiled: bool, micro_batch: int, steps: int,
            model_class=Transformer) -> tuple[float, float]:
    torch.manual_seed(0)
    model = model_class(shape)
    optimizer = build_optimizer(model, load_config().optim, torch.device("cpu"))
    loader = PackedLoader(synthetic_docs(shape.vocab_size), shape.max_seq_len, micro_batch, eot_id=0)
    objective = NextToken()
    step_loss = StageLoss(model, objective)
    runner = torch.compile(step_loss) if compiled else step_loss
    autocast = autocast_context(torch.device("cpu"), precision)
    warmup = 2
    times = []
    for i in range(warmup + steps):
        start = time.perf_counter()
        train_step(runner, objective, optimizer, loader, autocast, 1, 1.0, DistEnv(0, 1, torch.device("cpu")))
        times.append(time.perf_counter() - start)
    per_step = float(np.median(times[warmup:]))
    tok_s = micro_batch * shape.max_seq_len / per_step
    return tok_s, tok_s * model.flops_per_token(shape.max_seq_len)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--micro-batch", type=int, default=16)
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows (each compiles ~1 min)")
    p.add_argument("--precisions", default="", help="comma-separated (default: those usable on this machine)")
    args = p.parse_args()
    torch.manual_seed(0)
    cpu = torch.device("cpu")
    probe = resolve_precision("auto", Transformer(REFERENCE), REFERENCE.max_seq_len, cpu)
    best = probe.timings[probe.precision]
    precisions = (args.precisions.split(",") if args.precisions else
                  [name for name in ("fp32", "bf16") if probe.timings[name] <= SLOW_FACTOR * best])
    print(f"{device_name(cpu)}: {probe.describe()}; benchmarking {', '.join(precisions)}")
    peaks = {name: peak_flops(cpu, name) for name in precisions}
    print("matmul peak (measured): " + ", ".join(f"{name} {peak / 1e9:.0f} GFLOP/s" for name, peak in peaks.items()))
    rows = {
        "codelm tiny.toml": (load_config(DEFAULT_CONFIG).model, Transformer),
        "codelm 6x384x6h": (REFERENCE, Transformer),
        "nanoGPT 6x384x6h": (REFERENCE, NanoGPT),
    }
    print(f"{'model':<20} {'params':>8} {'precision':>9} {'mode':>8} {'tok/s':>8} {'TFLOP/s':>8} {'MFU':>6}")
    for name, (shape, model_class) in rows.items():
        n_params = sum(p.numel() for p in model_class(shape).parameters()) / 1e6
        for precision in precisions:
            for compiled in (False, True) if not args.no_compile else (False,):
                tok_s, flops = measure(shape, precision, compiled, args.micro_batch, args.steps, model_class)
                mode = "compiled" if compiled else "eager"
                print(f"{name:<20} {n_params:>7.1f}M {precision:>9} {mode:>8} {tok_s:>8,.0f} {flops / 1e12:>8.3f} "
                      f"{100 * flops / peaks[precision]:>5.1f}%", flush=True)


if __name__ == "__main__":
    main()
