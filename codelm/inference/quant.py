"""Weight-only int8 for decoding: `quantize_int8(model)` replaces every Linear layer (the LM head too) in place.

Decoding one token reads every weight once, so at small batch its time is the
weights' bytes over memory bandwidth. int8 weights with one fp32 scale per
output channel (absmax / 127) are a quarter of fp32's bytes; activations stay
fp32, so the model loses almost nothing (SmolLM2-135M on stdlib code: bits per
byte 0.7641 -> 0.7646). The embedding table stays fp32 (a lookup reads one row per token).

On CPU the product runs in a small AVX2 kernel (int8_linear.cpp), built once
per machine and torch version with the system C++ compiler: torch's own
`_weight_int8pack_mm` and torchao's weight-only int8 are 3-10x slower than fp32
on AVX2-only CPUs, and fbgemm's dynamic int8 also quantizes activations (SmolLM2's
loss +3%). Many rows at once (a prefill) and GPUs dequantize into one GEMM instead,
which torch.compile fuses on GPU.

A quantized model is for inference only: checkpoint writing refuses it.
"""

import functools
import sys
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils import cpp_extension

from codelm.errors import UserError

KERNEL = Path(__file__).with_name("int8_linear.cpp")
KERNEL_MAX_ROWS = 32  # above this many rows (a prefill) a dequantized fp32 GEMM is as fast (measured)


class Int8Linear(nn.Module):
    """A bias-free Linear whose weight is int8 (N, K) times a per-output-channel fp32 scale (N,)."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        weight = weight.detach().float()
        scale = weight.abs().amax(dim=1).clamp(min=1e-12) / 127
        self.register_buffer("weight", (weight / scale[:, None]).round().clamp(-127, 127).to(torch.int8))
        self.register_buffer("scale", scale)
        self.in_features, self.out_features = weight.shape[1], weight.shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)
        scale = self.scale.float()  # bf16 after a model.to(bf16); quantize after converting to keep fp32
        if rows.device.type == "cpu" and rows.shape[0] <= KERNEL_MAX_ROWS:
            y = torch.ops.codelm.int8_linear(rows.float(), self.weight, scale)
        else:
            y = F.linear(rows, self.weight.to(rows.dtype)) * scale.to(rows.dtype)
        return y.to(x.dtype).view(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8"


def is_quantized(model: nn.Module) -> bool:
    return any(isinstance(m, Int8Linear) for m in model.modules())


def quantize_int8(model: nn.Module) -> nn.Module:
    """Replace every nn.Linear of `model` in place by an Int8Linear; returns the model.

    A tied LM head gets its own int8 copy of the embedding matrix; the embedding keeps fp32."""
    if next(model.parameters()).device.type == "cpu":
        load_kernel()
    linears = [(name, m) for name, m in model.named_modules() if type(m) is nn.Linear]
    for name, linear in linears:
        if linear.bias is not None:
            raise UserError(f"int8 quantization supports bias-free Linear layers; {name} has a bias")
        if linear.in_features % 8:
            raise UserError(f"int8 quantization needs input widths that are multiples of 8; {name} has "
                            f"{linear.in_features}")
        parent, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent), attr, Int8Linear(linear.weight))
    return model


@functools.cache
def load_kernel():
    """Build (once per machine and torch version, ~15-60 s) and load the CPU kernel: torch.ops.codelm.int8_linear."""
    if torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"):
        raise UserError("--quantize int8 on CPU needs an x86 CPU with AVX2 "
                        f"(this one: {torch.backends.cpu.get_cpu_capability()})")
    build = Path(cpp_extension.get_default_build_root()) / "codelm_int8"
    if not any(build.glob("codelm_int8*.so")):
        print("building the int8 kernel with the C++ compiler (once per machine, up to a minute)...",
              file=sys.stderr, flush=True)
    build.mkdir(parents=True, exist_ok=True)
    try:
        cpp_extension.load("codelm_int8", [str(KERNEL)], extra_cflags=["-O3", "-mavx2", "-mfma"],
                           build_directory=str(build), is_python_module=False)
    except (RuntimeError, OSError) as e:
        raise UserError(f"--quantize int8 builds a small C++ kernel once and needs g++ and ninja for it: {e}") from e
    torch.library.register_fake("codelm::int8_linear")(
        lambda x, w, scale: x.new_empty(x.shape[0], w.shape[0]))
