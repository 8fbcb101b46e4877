"""`codelm speedrun`: curated corpus -> tokenizer -> token shards -> pretraining -> evaluation -> samples ->
instructions mined from the corpus -> a short SFT -> chat behaviour before and after -> report.md.

Each step is the same stage function its own command runs, writing into the
run directory; a step whose output is already there is reused, so rerunning
with the same --out after a crash picks up where it stopped (training resumes
from its last checkpoint).
"""

import json
import time
from pathlib import Path

from codelm.checkpoint import latest_checkpoint, load_model
from codelm.config import EvalConfig, SamplingParams, load_config
from codelm.data.card import load_stats, stats_table
from codelm.data.corpus import TokenizedStats, tokenize_corpus, train_tokenizer_on_corpus
from codelm.data.pipeline import curate, load_curate_config
from codelm.data.shards import TokenShards
from codelm.errors import UserError
from codelm.eval.bpb import compression_bpb, unigram_entropy
from codelm.eval.runner import Evaluation
from codelm.inference.engine import Engine
from codelm.io import atomic_write_json
from codelm.model.llama import Transformer
from codelm.precision import PrecisionChoice, machine_profile
from codelm.report import RunSummary, write_eval_report, write_report
from codelm.synth.config import MineConfig
from codelm.synth.mine import mine
from codelm.train.loop import resolve_precision, setup_distributed
from codelm.train.pretrain import pretrain
from codelm.train.sft import DEFAULT_CONFIG as SFT_CONFIG
from codelm.train.sft import sft
from codelm.train.sizing import LADDER, plan_shape, plan_text

# package data, so that an installed codelm (not only a checkout) finds it
DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "tiny.toml"

COMPLETION_PROMPTS = [
    "import os\n\n\ndef list_python_files(directory):\n    \"\"\"Return the paths of all .py files under "
    "directory.\"\"\"\n",
    "class Stack:\n    \"\"\"A last-in, first-out stack.\"\"\"\n\n    def __init__(self):\n",
    "def is_prime(n):\n",
]
FIM_PROMPTS = [
    ("def add(a, b):\n    ", "\n\n\nprint(add(1, 2))\n"),
    ("import sys\n\n\ndef main(argv):\n    if len(argv) < 2:\n", "    return 0\n\n\nif __name__ == '__main__':\n"
     "    sys.exit(main(sys.argv))\n"),
]


# The speedrun's SFT stage: one pass over the mined instructions that fit the model's context, at a learning
# rate for a model this small (sft.toml's 5e-5 is for fine-tuning a 100M+ model), no compilation (it would cost
# more than the stage's few seconds of training).
SFT_SETTINGS = ["optim.lr=1e-3", "sft.epochs=1", "train.compile=false", "train.eval_every=0", "train.log_every=10"]


def _banner(text: str):
    print(f"\n=== {text} ===", flush=True)


def write_samples(run_dir: Path, model, tok, max_new_tokens: int = 64) -> list[dict]:
    engine, greedy = Engine(model, tok), SamplingParams(max_new_tokens=max_new_tokens)
    samples = [{"kind": "completion", "text": prompt + c.text}
               for prompt, [c] in zip(COMPLETION_PROMPTS, engine.generate(COMPLETION_PROMPTS, greedy))]
    for prefix, suffix in FIM_PROMPTS:
        middle = engine.complete_middle(prefix, suffix, greedy)[0].text
        samples.append({"kind": "fill-in-the-middle (middle between the markers)",
                        "text": f"{prefix}⟪{middle}⟫{suffix}"})
    atomic_write_json(run_dir / "samples.json", samples)
    for s in samples:
        print(f"--- {s['kind']}\n{s['text']}")
    return samples


def fit_shape(cfg, shape: str, run_dir: Path) -> tuple[list[str], str]:
    """--set overrides for the model shape, and the report's text on why.

    "auto" sizes the model for the budget on this machine (codelm.train.sizing), once per
    run directory: a resumed run keeps the shape it started with."""
    plan_path = run_dir / "plan.json"
    if plan_path.is_file():
        plan = json.loads(plan_path.read_text())
        print(f"reusing the model shape of {plan_path}: {plan['shape']}")
    elif shape == "config":
        return [], f"Shape as configured: {cfg.model.n_layers} layers x {cfg.model.dim}."
    else:
        device = setup_distributed(cfg.train.device).device
        precision = resolve_precision(cfg.train.precision, Transformer(cfg.model), cfg.data.seq_len, device).precision
        chosen, candidates = plan_shape(cfg, device, precision, budget_seconds=cfg.train.max_minutes * 60,
                                        budget_steps=cfg.train.max_steps)
        if shape != "auto":
            chosen = next(c.shape for c in candidates if c.shape.name == shape)
        text = plan_text(chosen, candidates, machine_profile(device), precision)
        if shape != "auto":
            text += f"\n\nShape {shape} was asked for with --shape."
        plan = {"shape": chosen.name, "text": text}
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(plan_path, plan)
    s = next(s for s in LADDER if s.name == plan["shape"])
    print(f"model shape {s.name} ({s.n_layers} layers x {s.dim}, {s.n_heads} heads, {s.n_kv_heads} kv)", flush=True)
    return [f"model.n_layers={s.n_layers}", f"model.dim={s.dim}", f"model.n_heads={s.n_heads}",
            f"model.n_kv_heads={s.n_kv_heads}"], plan["text"]


def chat_behaviour(run_dir: Path, curated_dir: Path, checkpoint: Path, seq_len: int) -> dict[str, Path]:
    """Mine instructions from the corpus, fine-tune the checkpoint on them, and score HumanEval in chat form
    before and after; returns the two evaluations' directories (the report reads them)."""
    instructions = curated_dir.parent / "instructions.jsonl"
    if instructions.is_file():
        print(f"reusing {instructions}")
    else:
        print(mine(MineConfig(corpus=str(curated_dir), out=str(instructions))).summary(str(instructions)))
    sft_dir = run_dir / "sft"
    precision = PrecisionChoice.load(run_dir / "precision.json").precision  # pretraining's: same model, machine
    cfg = load_config(SFT_CONFIG, [*SFT_SETTINGS, f'train.init_from="{checkpoint}"', f'sft.data="{instructions}"',
                                   f'train.out_dir="{sft_dir}"', f"data.seq_len={seq_len}",
                                   f'train.precision="{precision}"'])
    sft(cfg, resume=latest_checkpoint(sft_dir / "checkpoints") is not None)
    evaluations = {"pretrained": run_dir / "chat" / "pretrained", "after SFT": run_dir / "chat" / "sft"}
    for name, source in (("pretrained", checkpoint), ("after SFT", sft_dir)):
        model, tok, _ = load_model(source)  # fp32, as step 6 evaluates: no decode probe
        results = Evaluation(EvalConfig(checkpoint=str(source), tasks=["humaneval"], chat=True,
                                        out=str(evaluations[name])), engine=Engine(model, tok)).run()
        write_eval_report(evaluations[name], results)
    return evaluations


def speedrun(data=None, out=None, config=None, overrides=(), shape="auto") -> Path:
    start = time.time()
    run_dir = Path(out or time.strftime("runs/speedrun-%Y%m%d-%H%M%S"))
    data_dir = run_dir / "data"
    curated_dir = data_dir / "curated"
    tokenizer_path = data_dir / "tokenizer.json"
    tokens_dir = data_dir / "tokens"
    config = Path(config) if config else DEFAULT_CONFIG
    if not config.is_file():
        raise UserError(f"config not found: {config}")
    # the tokenizer's vocabulary is model.vocab_size (--vocab-size); the model's embedding and head are as wide
    settings = [*overrides, f'data.tokens="{tokens_dir}"', f'train.out_dir="{run_dir}"']
    cfg = load_config(config, settings)  # fail on a bad key before any work

    _banner(f"1/8 curate ({'stdlib' if not data else ', '.join(data)})")
    if (curated_dir / "stats.json").is_file():
        print(f"reusing {curated_dir}")
    else:
        curate(load_curate_config(None, data or []), curated_dir)
    print(stats_table(load_stats(curated_dir)))
    _banner("2/8 tokenizer")
    if tokenizer_path.is_file():
        print(f"reusing {tokenizer_path}")
    else:
        train_tokenizer_on_corpus([str(curated_dir)], tokenizer_path, cfg.model.vocab_size)
    _banner("3/8 tokenize")
    if (tokens_dir / "stats.json").is_file():
        print(f"reusing {tokens_dir}")
    else:
        tokenize_corpus([str(curated_dir)], tokenizer_path, tokens_dir)
    splits = TokenizedStats.load(tokens_dir).splits
    print(f"train {splits['train'].tokens:,} tokens, val {splits['val'].tokens:,} tokens")

    _banner(f"4/8 pretrain {config.name}")
    shape_settings, plan = fit_shape(cfg, shape, run_dir)
    cfg = load_config(config, [*settings, *shape_settings])
    resume = latest_checkpoint(run_dir / "checkpoints") is not None
    result = pretrain(cfg, resume=resume)
    if result.get("stopped"):
        print(f"stopped by signal; rerun with --out {run_dir} to resume")
        return run_dir

    _banner("5/8 samples")
    model, tok, _ = load_model(run_dir)
    write_samples(run_dir, model, tok)

    _banner("6/8 evaluate: HumanEval pass@1, contamination of the curated corpus")
    # infilling takes minutes more at this size: `codelm eval --tasks humaneval-infill-single --checkpoint RUN`
    eval_dir = run_dir / "eval"
    results = Evaluation(EvalConfig(checkpoint=str(run_dir), tasks=["humaneval", "contamination"],
                                    corpus=[str(curated_dir)], out=str(eval_dir)),
                         engine=Engine(model, tok)).run()  # the model step 5 loaded
    write_eval_report(eval_dir, results)
    train_docs = TokenShards(tokens_dir / "train")
    val_docs = TokenShards(tokens_dir / "val")
    summary = RunSummary(step=result["step"], bpb=result["bpb"], loss=result["loss"], params=model.num_params(),
                         unigram_loss=unigram_entropy(train_docs, train_docs.vocab_size, tok.eot_id),
                         compression=compression_bpb([tok.decode(ids) for ids in val_docs]), plan=plan,
                         wall_minutes=(time.time() - start) / 60)
    summary.save(run_dir / "summary.json")

    _banner("7/8 chat: instructions mined from the corpus, a short SFT, HumanEval as chat before and after")
    chat_behaviour(run_dir, curated_dir, latest_checkpoint(run_dir / "checkpoints"), cfg.data.seq_len)

    _banner("8/8 report")
    report = write_report(run_dir, title="codelm speedrun")
    gz = summary.compression
    print(f"validation bpb {summary.bpb:.4f} (gzip -9 {gz.gzip:.4f}, xz -9e {gz.xz:.4f}; loss "
          f"{summary.loss:.4f}, unigram baseline {summary.unigram_loss:.4f}) | total "
          f"{summary.wall_minutes:.1f} min | report: {report}")
    return run_dir
