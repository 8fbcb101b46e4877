"""`codelm <command>`: one entry point, one module per command group, each imported only when named.

COMMANDS lists every command with its one-line help, so `codelm --help` needs no command module (they import
the config dataclasses, some of which pull in datatrove or torch). A command's module defines a function that
adds its parser and sets `run` (see codelm/cli/options.py for how settings become options).
"""

import argparse
import importlib
import sys

from codelm.cli.options import WrappingFormatter
from codelm.errors import UserError

EXTRAS = {"detect_secrets": "curate", "orjson": "curate", "fastapi": "serve", "uvicorn": "serve", "ray": "ray"}
COMMANDS = {  # name: ("module:function", one-line help)
    "speedrun": ("speedrun:speedrun", "the whole pipeline on the stdlib (or --data) in about ten minutes"),
    "curate": ("data:curate", "curate a code corpus: filter, redact, dedup, decontaminate, order, mix"),
    "data": ("data:data", "inspect curated data"),
    "tokenizer": ("data:tokenizer", "train a byte-level BPE tokenizer"),
    "tokenize": ("data:tokenize", "tokenize a corpus into train/val token shards"),
    "pretrain": ("train:add_recipe", "pretrain a model (next-token + FIM); runs under torchrun too"),
    "sft": ("train:add_recipe", "supervised fine-tuning on chats: assistant-only loss, optional LoRA"),
    "distill": ("train:add_recipe", "token-level distillation from a teacher with the same tokenizer (KL, GKD)"),
    "rl": ("train:add_recipe", "reinforcement learning from execution: sampled programs rewarded by their tests"),
    "dpo": ("train:add_recipe", "direct preference optimisation on chosen/rejected pairs, or pairs from execution"),
    "reward-model": ("train:add_recipe", "a reward model: a scalar head trained on preference pairs"),
    "generate": ("generate:generate", "generate from a checkpoint: greedy, sampling, beam, speculative"),
    "complete": ("generate:complete", "fill in the middle between a prefix file and a suffix file"),
    "serve": ("serve:serve", "an OpenAI-compatible HTTP server with continuous batching and a playground"),
    "import": ("interop:import_", "import an HF Llama folder or a GGUF file as a codelm checkpoint"),
    "export": ("interop:export", "export a checkpoint for transformers"),
    "sandbox": ("sandbox:sandbox", "run untrusted code with the evaluator's isolation"),
    "eval": ("eval:eval_", "evaluate a checkpoint: pass@k, infilling, bits per byte, contamination"),
    "synth": ("synth:synth", "instruction data made from code"),
    "tasks": ("tasks:tasks", "benchmark tasks made offline: bug-fix tasks from a repository and its tests"),
    "scaling": ("scaling:scaling", "scaling laws: FLOPs accounting, IsoFLOP sweeps, Chinchilla fits"),
}


def build_parser(commands=None) -> argparse.ArgumentParser:
    """The parser with these commands built (None: all); the others are listed with their help only."""
    parser = argparse.ArgumentParser(prog="codelm", description="Build code language models end to end.",
                                     formatter_class=WrappingFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (target, text) in COMMANDS.items():
        if commands is None or name in commands:
            module, function = target.split(":")
            getattr(importlib.import_module(f"codelm.cli.{module}"), function)(sub, name, text)
        else:
            sub.add_parser(name, help=text)
    return parser


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    named = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser([named] if named in COMMANDS else []).parse_args(argv)
    try:
        args.run(args)
    except UserError as e:
        print(f"codelm: error: {e}", file=sys.stderr)
        sys.exit(2)
    except ModuleNotFoundError as e:
        extra = EXTRAS.get((e.name or "").split(".")[0])
        if extra is None:
            raise
        print(f"codelm: error: codelm {args.command} needs {e.name}: pip install 'codelm[{extra}]'", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("codelm: interrupted", file=sys.stderr)
        sys.exit(130)
