"""`codelm <command>`: one entry point; each command parses its arguments and calls one stage.

Option defaults come from the config dataclasses (codelm.config, sandbox Limits),
never restated here. Each command imports its stage when it runs: importing
every stage up front (torch, datatrove, matplotlib) takes about 8 s on a 2-core
CPU, against under 1 s for the parser, so `--help` and argument errors stay instant.
"""

import argparse
import json
import os
import sys
from dataclasses import asdict
from pathlib import Path

from codelm.config import (
    DEFAULT_VAL_FRACTION,
    LADDER,
    EvalConfig,
    LoraConfig,
    ModelConfig,
    SamplingParams,
    field_default,
    from_args,
)
from codelm.errors import UserError
from codelm.sandbox.supervisor import Limits
from codelm.scaling.config import PARAM_CONVENTIONS, TRAINING_CONFIG, FitConfig, SweepConfig
from codelm.serve.config import ServeConfig
from codelm.synth.config import MagpieConfig, MineConfig, OssInstructConfig, TeacherConfig

SHAPE_NAMES = [shape.name for shape in LADDER]
CONFIGS = Path(__file__).resolve().parent / "configs"  # package data: the recipes' default TOMLs

DATA_HELP = ("a `codelm curate` output directory, or files/directories of code read as they are (repeatable); "
             "default: the Python standard library of this interpreter")


def cmd_speedrun(args):
    from codelm.speedrun import speedrun

    speedrun(data=args.data, out=args.out, minutes=args.minutes, max_steps=args.max_steps,
             config=args.config, overrides=args.set, vocab_size=args.vocab_size, shape=args.shape)


def cmd_curate(args):
    from codelm.data.pipeline import curate, load_curate_config

    cfg = load_curate_config(args.config, args.data or [], args.set)
    if args.tasks:
        cfg.executor.tasks = args.tasks
    out = curate(cfg, args.out)
    if (out / "stats.json").is_file():  # not yet when Slurm jobs were only submitted
        from codelm.data.card import load_stats, stats_table

        print(stats_table(load_stats(out)), end="")
        print(f"curated corpus -> {out} (DATA_CARD.md, stats.json, data/)")


def cmd_data_stats(args):
    from codelm.data.card import load_stats, stats_table

    print(stats_table(load_stats(args.dir)), end="")


def cmd_tokenizer_train(args):
    from codelm.data.corpus import train_tokenizer_on_corpus

    tok, docs = train_tokenizer_on_corpus(args.data, args.out, args.vocab_size, args.val_fraction)
    print(f"tokenizer: {tok.vocab_size} tokens, trained on {docs} documents -> {args.out}")


def cmd_tokenize(args):
    from codelm.data.corpus import tokenize_corpus

    stats = tokenize_corpus(args.data, args.tokenizer, args.out, args.val_fraction)
    print(json.dumps(asdict(stats), indent=2))


def cmd_pretrain(args):
    from codelm.config import load_config
    from codelm.train.pretrain import pretrain

    pretrain(load_config(args.config, [*settings_of(lora_options(args)), *args.set]), resume=args.resume)


def add_lora_args(parser: argparse.ArgumentParser):
    """LoRA for any recipe that trains (the [lora] section; --set lora.KEY=VALUE works the same). Options left out
    keep the config's values."""
    for name, kind, text in (("r", int, "adapter rank: LoRA on, the base frozen (0: full fine-tuning)"),
                             ("alpha", float, "the adapter's output is scaled by alpha / r"),
                             ("targets", str, "comma-separated Linear layers to adapt")):
        parser.add_argument(f"--lora-{name}", type=kind, default=None,
                            help=f"{text} (lora.{name}; default {field_default(LoraConfig, name)})")
    parser.add_argument("--rslora", action="store_true", help="rank-stabilized scaling alpha / sqrt(r) (lora.rslora)")


def add_pairs_args(parser: argparse.ArgumentParser):
    parser.add_argument("--pairs", help="preference pairs JSONL (pairs.file)")
    parser.add_argument("--from-tasks", help="build pairs by execution from these tasks, as `codelm rl --tasks` "
                        "(pairs.from_tasks)")
    parser.add_argument("--chat", action="store_true", help="ask the tasks through the chat template (pairs.chat)")


def settings_of(named: dict) -> list[str]:
    """KEY=VALUE config settings of the options given (None and "" are options not given)."""
    return [f"{key}={str(value).lower() if isinstance(value, bool) else repr(value)}"  # TOML: true, 'text'
            for key, value in named.items() if value is not None and value != ""]


def lora_options(args) -> dict:
    """The --lora-* options given (a command without them, reward-model, gives none)."""
    return {f"lora.{name}": getattr(args, option, None) or None
            for name, option in (("r", "lora_r"), ("alpha", "lora_alpha"), ("targets", "lora_targets"),
                                 ("rslora", "rslora"))}


def recipe_config(args, default: Path, **named):
    """A post-training recipe's config: its default TOML (or --config), the named options given, then --set."""
    from codelm.config import load_config

    named |= {"train.init_from": args.init_from, "train.out_dir": args.out, **lora_options(args)}
    return load_config(args.config or default, [*settings_of(named), *args.set])


def chat_recipe_config(args, **named):
    """The config of a recipe that learns from chats: sft.toml (or --config), the named options, then --set."""
    return recipe_config(args, CONFIGS / "sft.toml", **{"sft.data": args.data}, **named)


def chat_humaneval(cfg, result: dict, limit: int):
    """HumanEval asked as a chat of a chat recipe's final checkpoint (--humaneval), into OUT/eval."""
    from codelm.eval.runner import Evaluation
    from codelm.report import write_eval_report

    if result.get("stopped"):
        return
    evaluation = Evaluation(EvalConfig(checkpoint=cfg.train.out_dir, tasks=["humaneval"], chat=True, limit=limit,
                                       out=os.path.join(cfg.train.out_dir, "eval")))
    write_eval_report(evaluation.out, evaluation.run())


def cmd_sft(args):
    from codelm.train.sft import sft

    cfg = chat_recipe_config(args)
    result = sft(cfg, resume=args.resume)
    if args.humaneval is not None:
        chat_humaneval(cfg, result, args.humaneval)


def cmd_distill(args):
    from codelm.train.distill import distill

    cfg = chat_recipe_config(args, **{"distill.teacher": args.teacher})
    result = distill(cfg, resume=args.resume)
    if args.humaneval is not None:
        chat_humaneval(cfg, result, args.humaneval)


def cmd_rl(args):
    from codelm.report import plot_rollouts
    from codelm.train.rl import rl

    cfg = recipe_config(args, CONFIGS / "rl.toml", **{"rl.tasks": args.tasks, "rl.chat": args.chat or None})
    result = rl(cfg, resume=args.resume)
    plot_rollouts(Path(cfg.train.out_dir))
    if args.humaneval is not None:
        chat_humaneval(cfg, result, args.humaneval)


def pairs_options(args) -> dict:
    return {"pairs.file": args.pairs, "pairs.from_tasks": args.from_tasks, "pairs.chat": args.chat or None}


def cmd_dpo(args):
    from codelm.train.dpo import dpo

    cfg = recipe_config(args, CONFIGS / "dpo.toml", **pairs_options(args), **{"dpo.reference": args.reference})
    result = dpo(cfg, resume=args.resume)
    if args.humaneval is not None:
        chat_humaneval(cfg, result, args.humaneval)


def cmd_reward_model(args):
    from codelm.train.reward_model import reward_model

    reward_model(recipe_config(args, CONFIGS / "reward_model.toml", **pairs_options(args)), resume=args.resume)


def _engine(checkpoint: str, args):
    from codelm.inference.engine import Engine

    return Engine.from_checkpoint(checkpoint, dtype=args.dtype, quantize=args.quantize, compile=args.compile)


def note_if_cut(completion):
    """Generation ran into the end of the context: say so on stderr, leaving stdout the text alone."""
    if completion.cut:
        print(f"[note] {completion.cut}", file=sys.stderr)


def read_input(path: str) -> str:
    """Text of a file the user named (- is standard input); a missing file is a one-line error."""
    if path == "-":
        return sys.stdin.read()
    if not os.path.isfile(path):
        raise UserError(f"file not found: {path}")
    with open(path) as f:
        return f.read()


def cmd_generate(args):
    engine = _engine(args.checkpoint, args)
    prompt = read_input(args.prompt_file) if args.prompt_file else args.prompt
    params = from_args(SamplingParams, args)
    if args.draft_checkpoint or args.prompt_lookup:
        from codelm.inference.speculative import (
            DraftModel,
            PromptLookup,
            speculative_generate,
        )

        drafter = PromptLookup() if args.prompt_lookup else DraftModel(_engine(args.draft_checkpoint, args))
        completion, stats = speculative_generate(engine, engine.encode(prompt), params, drafter, k=args.num_draft)
        print(prompt + completion.text)
        note_if_cut(completion)
        print(f"[speculative] acceptance {stats.acceptance_rate:.2f}, {stats.tokens_per_forward:.2f} tokens per "
              f"target forward ({stats.tokens} tokens, {stats.target_forwards} forwards)", file=sys.stderr)
        return
    if params.n == 1 and params.strategy != "beam":  # stream to the terminal
        print(prompt, end="", flush=True)
        [[completion]] = engine.generate([prompt], params, on_text=lambda i, j, text: print(text, end="", flush=True))
        print()
        note_if_cut(completion)
        return
    completions = engine.generate([prompt], params)[0]
    for j, completion in enumerate(completions):
        score = f", score {completion.score:.3f}" if completion.score is not None else ""
        print(f"--- completion {j + 1} ({completion.finish_reason}{score})\n{prompt}{completion.text}")
    note_if_cut(completions[0])


def cmd_complete(args):
    prefix, suffix = read_input(args.prefix_file), read_input(args.suffix_file)
    [middle] = _engine(args.checkpoint, args).complete_middle(prefix, suffix, from_args(SamplingParams, args))
    print(prefix + middle.text + suffix, end="")
    note_if_cut(middle)


def cmd_serve(args):
    from codelm.serve.api import serve

    serve(from_args(ServeConfig, args))


def cmd_import(args):
    if args.format == "hf":
        from codelm.interop.hf import import_hf as importer
    else:
        from codelm.interop.gguf import import_gguf as importer
    print(f"imported {args.source} -> {importer(args.source, args.out)}")


def cmd_export(args):
    from codelm.interop.hf import export_hf

    out = export_hf(args.checkpoint, args.out, merge_lora=args.merge_lora)
    lora = "; its LoRA adapter in adapter/ with peft's PeftModel.from_pretrained" if (out / "adapter").is_dir() else ""
    print(f"exported {args.checkpoint} -> {out} "
          f"(load with transformers' AutoModelForCausalLM / AutoTokenizer.from_pretrained{lora})")


def cmd_sandbox_run(args):
    from codelm.sandbox.supervisor import run

    program = read_input(args.file)
    tests = read_input(args.tests) if args.tests else ""
    result = run(program, tests, from_args(Limits, args))
    print(json.dumps(asdict(result), indent=2))
    sys.exit(0 if result.status == "passed" else 1)


def cmd_synth_mine(args):
    from codelm.synth.mine import mine

    print(mine(from_args(MineConfig, args)).summary(args.out))


def cmd_synth_oss_instruct(args):
    from codelm.synth.oss_instruct import oss_instruct

    cfg = from_args(OssInstructConfig, args, teacher=from_args(TeacherConfig, args))
    print(oss_instruct(cfg).summary("oss-instruct", args.out))


def cmd_synth_magpie(args):
    from codelm.synth.magpie import magpie

    print(magpie(from_args(MagpieConfig, args, teacher=from_args(TeacherConfig, args))).summary("magpie", args.out))


def cmd_scaling_plan(args):
    from codelm.config import load_config
    from codelm.scaling.laws import load_law
    from codelm.scaling.plan import plan_text

    print(plan_text(load_config(args.config, args.set), args.flops, load_law(args.law)))


def cmd_scaling_sweep(args):
    from codelm.scaling.sweep import run_sweep

    runs = run_sweep(from_args(SweepConfig, args, overrides=args.set))
    if not args.emit_commands:
        print(f"{sum(r.status == 'done' for r in runs)} of {len(runs)} runs done -> {args.out}/results.csv, results.md")


def cmd_scaling_fit(args):
    from codelm.scaling.analysis import fit_sweep

    print(fit_sweep(from_args(FitConfig, args)))


def cmd_eval(args):
    from codelm.eval.runner import Evaluation
    from codelm.report import is_run_dir, report_title, write_eval_report, write_report

    evaluation = Evaluation(from_args(EvalConfig, args))
    results = evaluation.run()
    write_eval_report(evaluation.out, results)
    run_dir = evaluation.out.parent
    if evaluation.out.name == "eval" and is_run_dir(run_dir):  # the run report reads RUN/eval/results.json
        write_report(run_dir, title=report_title(run_dir))
    print(f"results -> {evaluation.out}/results.json, samples.jsonl, report.md")


def comma_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def int_list(text: str) -> list[int]:
    try:
        return [int(part) for part in comma_list(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def float_list(text: str) -> list[float]:
    try:
        return [float(part) for part in comma_list(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def config_option(parser: argparse.ArgumentParser, cls, name: str, text: str, **kw):
    """--name for the config field `name` of `cls`: its default (shown in the help) and its type come from the field."""
    default = field_default(cls, name)
    kw.setdefault("type", type(default))
    shown = ",".join(f"{value:g}" for value in default) if isinstance(default, list) else default  # as typed
    parser.add_argument(f"--{name.replace('_', '-')}", default=default, help=f"{text} (default {shown})", **kw)


def add_corpus_args(parser: argparse.ArgumentParser):
    """--data and --val-fraction: the same corpus and split for the tokenizer and the shards."""
    parser.add_argument("--data", action="append", help=DATA_HELP)
    parser.add_argument("--val-fraction", type=float, default=DEFAULT_VAL_FRACTION,
                        help="fraction of files held out, chosen by path hash (default %(default)s)")


def add_sampling_args(parser: argparse.ArgumentParser):
    """Decoding settings shared by generate and complete (see codelm.inference.sampling)."""
    def option(name: str, text: str, **kw):
        config_option(parser, SamplingParams, name, text, **kw)

    option("strategy", "how tokens are chosen", choices=["greedy", "sample", "beam"])
    option("temperature", "sampling temperature (strategy sample)")
    option("top_k", "keep the k most likely tokens (0: off)")
    option("top_p", "nucleus: smallest set with this mass (1: off)")
    option("min_p", "drop tokens below min-p x the top probability")
    option("repetition_penalty", "> 1 discourages repeats (1: off)")
    option("num_beams", "beam width (strategy beam)")
    option("length_penalty", "beam score = logprob / length^this")
    option("n", "completions per prompt")
    option("max_new_tokens", "new tokens at most; generation also stops at the end of the model's context")
    parser.add_argument("--stop", action="append", default=field_default(SamplingParams, "stop"),
                        help="stop string (repeatable), matched on decoded text")
    option("seed", "sampling seed")
    add_engine_args(parser)


def add_engine_args(parser: argparse.ArgumentParser):
    """How the engine runs the model: precision, int8 weights, a compiled decode step (generate, complete, eval)."""
    parser.add_argument("--dtype", choices=["auto", "fp32", "bf16", "fp64"], default="auto",
                        help="weights and cache precision; auto (default): the fastest decode step on this machine, "
                        "timed once and cached (fp32 on CPUs without fast bf16); fp64: about 2x slower, greedy "
                        "output independent of the batch size")
    parser.add_argument("--quantize", choices=["int8"], default=None,
                        help="int8: weight-only int8 Linear layers (per-channel scales, activations in full "
                        "precision), about 2x faster decoding on CPU, bits per byte within 0.1%% on SmolLM2; "
                        "builds a small C++ kernel once per machine (needs g++)")
    parser.add_argument("--compile", action="store_true",
                        help="compile the decode step with torch.compile (CUDA graphs on GPU): faster per token, "
                        "but compiling takes 20 s to 2 minutes, so it pays only for long generations")


def add_teacher_args(parser: argparse.ArgumentParser):
    """The teacher of `synth oss-instruct` and `synth magpie` (TeacherConfig): a checkpoint or an endpoint."""
    who = parser.add_mutually_exclusive_group(required=True)
    who.add_argument("--teacher", dest="checkpoint", default="", metavar="CHECKPOINT",
                     help="a codelm checkpoint directory (trained or imported), run through the engine")
    who.add_argument("--teacher-url", dest="url", default="", metavar="URL",
                     help="an OpenAI-compatible endpoint, e.g. http://host:8000/v1 (its /chat/completions; Magpie "
                     "also its /completions)")
    parser.add_argument("--teacher-model", dest="model", default=field_default(TeacherConfig, "model"),
                        help="the endpoint's model name (default: the first its /models lists)")

    def option(name: str, text: str, **kw):
        config_option(parser, TeacherConfig, name, text, **kw)

    option("api_key_env", "environment variable holding the endpoint's API key (sent as a Bearer token if set)")
    option("template", "the teacher's chat template, a Jinja file or a tokenizer_config.json; empty: the "
           "checkpoint's own, ChatML for a URL (Magpie's pre-query prefix comes from it)")
    option("timeout", "seconds to wait for one reply from the endpoint")
    option("batch_size", "prompts per teacher call: the engine's batch, or requests in flight to the endpoint")
    option("dtype", "the checkpoint's precision in the engine", choices=["auto", "fp32", "bf16", "fp64"])


def command_group(sub, name: str, text: str):
    """A command with subcommands of its own (`codelm tokenizer train`, `codelm synth mine`, ...)."""
    return sub.add_parser(name, help=text).add_subparsers(dest="sub", required=True, metavar="SUB")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="codelm", description="Build code language models end to end.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("speedrun", help="the whole pipeline on the stdlib (or --data) in about ten minutes",
                       description="Curate a corpus (default: this Python's standard library; file-level), "
                       "split train/validation by path hash, train a tokenizer, tokenize, "
                       "pretrain codelm/configs/tiny.toml, evaluate, sample, and write OUT/report.md.")
    s.add_argument("--data", action="append", help=DATA_HELP)
    s.add_argument("--out", default=None, help="run directory (default: runs/speedrun-<timestamp>)")
    s.add_argument("--minutes", type=float, default=None, help="training time budget (default: the config's, 10)")
    s.add_argument("--max-steps", type=int, default=None, help="train exactly this many steps instead of a time budget")
    s.add_argument("--config", default=None, help="model/training config (default: codelm/configs/tiny.toml)")
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    s.add_argument("--vocab-size", type=int, default=None,
                   help="tokenizer vocabulary, and the model's (default: the config's model.vocab_size)")
    s.add_argument("--shape", default="auto", choices=["auto", "config", *SHAPE_NAMES],
                   help="model shape: auto (default) times a ladder of shapes here and takes the largest that sees "
                   "enough tokens per parameter in the budget; config keeps the config file's; or a ladder shape")
    s.set_defaults(func=cmd_speedrun)

    c = sub.add_parser("curate", help="curate a code corpus: filter, redact, dedup, decontaminate, order, mix",
                       description="Run the datatrove curation pipeline (quality filters, PII/secret redaction, "
                       "HumanEval decontamination, exact + MinHash near-dedup, optional repository-level documents) "
                       "and write OUT/data/<source>/*.parquet, OUT/stats.json and OUT/DATA_CARD.md. With no config "
                       "and no --data it curates this Python's standard library. See codelm/configs/data.toml.")
    c.add_argument("--config", default=None, help="curation config TOML (sources, filters, dedup, mix, executor)")
    c.add_argument("--data", action="append", help="directory, git work tree, or Stack-shaped .jsonl/.parquet "
                   "(repeatable; replaces the config's sources)")
    c.add_argument("--out", required=True, help="output directory (replaced atomically when done)")
    c.add_argument("--tasks", type=int, default=0, help="parallel shards (default: one per CPU core)")
    c.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set dedup.threshold=0.8 (repeatable)")
    c.set_defaults(func=cmd_curate)

    d = command_group(sub, "data", "inspect curated data")
    ds = d.add_parser("stats", help="print the documents/languages/removals table of a curated corpus")
    ds.add_argument("dir", help="a `codelm curate` output directory")
    ds.set_defaults(func=cmd_data_stats)

    t = command_group(sub, "tokenizer", "tokenizer commands")
    tt = t.add_parser("train", help="train byte-level BPE on a corpus's training split",
                      description="Train byte-level BPE (digits split, whitespace runs kept, codelm's special tokens) "
                      "on the training split of a corpus and save tokenizer.json.")
    add_corpus_args(tt)
    tt.add_argument("--out", required=True, help="where to write tokenizer.json")
    tt.add_argument("--vocab-size", type=int, default=field_default(ModelConfig, "vocab_size"),
                    help="vocabulary size, special tokens included (default %(default)s)")
    tt.set_defaults(func=cmd_tokenizer_train)

    k = sub.add_parser("tokenize", help="tokenize a corpus into train/val token shards",
                       description="Read a curated corpus (or raw files), split by path hash, apply the curated "
                       "source mix to the training split, and write OUT/train, OUT/val token shards, "
                       "OUT/tokenizer.json and OUT/stats.json (with the mix realized in tokens).")
    add_corpus_args(k)
    k.add_argument("--tokenizer", required=True, help="tokenizer.json")
    k.add_argument("--out", required=True, help="output directory")
    k.set_defaults(func=cmd_tokenize)

    r = sub.add_parser("pretrain", help="pretrain a model (next-token + FIM); runs under torchrun too",
                       description="Pretrain with the config's settings. Multi-process: "
                       "torchrun --nproc_per_node N -m codelm pretrain ... (DDP; add --set train.parallel=fsdp "
                       "to shard weights and optimizer state over the processes)")
    r.add_argument("--config", default=None, help="TOML config (see codelm/configs/)")
    r.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set train.max_steps=100 (repeatable)")
    r.add_argument("--resume", action="store_true", help="continue from train.out_dir/checkpoints/latest")
    add_lora_args(r)  # continued pretraining of train.init_from
    r.set_defaults(func=cmd_pretrain)

    def recipe(name: str, text: str, description: str, func, config: str, generates: bool = True):
        """A post-training command: a checkpoint in, a run directory out, a TOML of defaults, --set on top."""
        r = sub.add_parser(name, help=text, description=f"{description} Defaults: codelm/configs/{config}. "
                           "Runs under torchrun too.")
        r.add_argument("--init-from", help="checkpoint to fine-tune (train.init_from)")
        r.add_argument("--out", help="run directory (train.out_dir)")
        r.add_argument("--config", default=None, help=f"TOML config (default: codelm/configs/{config})")
        r.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config key, e.g. --set lora.r=16 --set optim.lr=5e-4 (repeatable)")
        r.add_argument("--resume", action="store_true", help="continue from OUT/checkpoints/latest")
        if generates:  # a reward model has a scalar head on the whole model: no LoRA, no generation
            add_lora_args(r)
            r.add_argument("--humaneval", type=int, nargs="?", const=0, metavar="LIMIT",
                           help="then ask HumanEval as chats of the result, greedy, into OUT/eval (LIMIT: the "
                           "first LIMIT problems; all 164 without it): pass@1 and the share of replies that define "
                           "the function asked for")
        r.set_defaults(func=func)
        return r

    def chat_recipe(name: str, text: str, description: str, func):
        r = recipe(name, text, description + " Data: JSONL with 'messages' (OpenAI/HF), 'prompt'/'completion' or "
                   "'instruction'/'response' per line, rendered with the checkpoint's chat template (ChatML for "
                   "codelm models). Examples are packed whole into rows; longer ones are dropped and counted.",
                   func, "sft.toml")
        r.add_argument("--data", help="chat JSONL (sft.data)")
        return r

    chat_recipe("sft", "supervised fine-tuning on chats: assistant-only loss, optional LoRA",
                "Fine-tune a checkpoint (codelm or imported) on chat data, learning only the assistant's tokens.",
                cmd_sft)
    dl = chat_recipe("distill", "token-level distillation from a teacher with the same tokenizer (KL, GKD)",
                     "Train a student checkpoint to match a teacher's next-token distributions on the assistant "
                     "tokens of chat data: forward KL (distill.beta=0), reverse KL (1) or generalized JSD between "
                     "them, at distill.temperature; distill.on_policy is the share of batches made of the student's "
                     "own sampled replies scored by the teacher (GKD).", cmd_distill)
    dl.add_argument("--teacher", help="the teacher's checkpoint (distill.teacher)")
    rl = recipe("rl", "reinforcement learning from execution: sampled programs rewarded by their tests",
                "Sample rl.samples programs for each of rl.prompts_per_step tasks from the current weights, run "
                "them against the tasks' tests in the sandbox (passed = reward 1; failed, error, syntax_error, "
                "timeout counted apart) and update with the policy-gradient core: GRPO by default, DAPO, Dr. GRPO, "
                "RLOO or REINFORCE by rl.* settings (README). Prints a line per rollout; writes rollouts.jsonl, "
                "reward_audit.jsonl (every program and its outcome), rl.json (held-out greedy pass@1 before and "
                "after) and rewards.png.", cmd_rl, "rl.toml")
    rl.add_argument("--tasks", help="procedural[:COUNT[:DIFFICULTY[:SEED]]] (offline, verifiable) or a JSONL of tasks "
                    "in HumanEval's shape or codelm synth rows with tests (rl.tasks)")
    rl.add_argument("--chat", action="store_true", help="ask through the chat template (rl.chat)")
    dp = recipe("dpo", "direct preference optimisation on chosen/rejected pairs, or pairs from execution",
                "Train on (prompt, chosen, rejected) pairs with the DPO (dpo.loss=sigmoid) or IPO loss against a "
                "reference whose log-probs are computed once and cached by a hash of its weights and the pairs. "
                "Pairs: JSONL with 'prompt' (text or chat messages), 'chosen' and 'rejected' (text or an assistant "
                "message), or --from-tasks: the policy samples pairs.samples programs per task and a passing one "
                "is paired with a failing one (OUT/pairs.jsonl). Writes dpo.json: held-out pairs' reward accuracy, "
                "and with --from-tasks the held-out tasks' greedy pass@1 before and after.", cmd_dpo, "dpo.toml")
    add_pairs_args(dp)
    rm = recipe("reward-model", "a reward model: a scalar head trained on preference pairs (Bradley-Terry)",
                "Add a scalar head to a checkpoint and train the whole model with the Bradley-Terry loss, "
                "-log sigmoid(r_chosen - r_rejected), on pairs from a file or from execution (as codelm dpo). "
                "Writes reward_model.json with the held-out pairs' accuracy before and after; `codelm rl --set "
                "rl.reward_model=OUT` then uses its score as the reward.", cmd_reward_model, "reward_model.toml",
                generates=False)
    add_pairs_args(rm)
    dp.add_argument("--reference", help="reference checkpoint (default: the --init-from weights; dpo.reference)")

    g = sub.add_parser("generate", help="generate from a checkpoint: greedy, sampling, beam, speculative",
                       description="Continue a prompt with the KV-cache engine. A single completion streams to the "
                       "terminal. Stop strings are matched on the decoded text.")
    g.add_argument("--checkpoint", required=True, help="checkpoint directory or run directory")
    source = g.add_mutually_exclusive_group(required=True)
    source.add_argument("--prompt", help="text to continue")
    source.add_argument("--prompt-file", help="file whose text to continue")
    add_sampling_args(g)
    g.add_argument("--draft-checkpoint", help="speculative decoding with this smaller model (same tokenizer)")
    g.add_argument("--prompt-lookup", action="store_true", help="speculative decoding with prompt-lookup drafts")
    g.add_argument("--num-draft", type=int, default=4, help="draft tokens per round (default %(default)s)")
    g.set_defaults(func=cmd_generate)

    f = sub.add_parser("complete", help="fill in the middle between a prefix file and a suffix file",
                       description="Fill-in-the-middle completion: the PSM prompt <fim_prefix>A<fim_suffix>B"
                       "<fim_middle>, generated until <|endoftext|>; prints prefix + middle + suffix.")
    f.add_argument("--checkpoint", required=True, help="checkpoint directory or run directory")
    f.add_argument("--prefix-file", required=True, help="the code before the gap")
    f.add_argument("--suffix-file", required=True, help="the code after the gap")
    add_sampling_args(f)
    f.set_defaults(func=cmd_complete)

    v = sub.add_parser("serve", help="an OpenAI-compatible HTTP server with continuous batching and a playground",
                       description="Serve a checkpoint: /v1/completions (suffix for fill-in-the-middle), "
                       "/v1/chat/completions, /v1/models, llama.cpp's /infill, /health, /metrics (Prometheus), and "
                       "a browser playground at /. Requests are batched continuously; prompts that share a prefix "
                       "share its KV-cache blocks.")
    v.add_argument("--checkpoint", required=True, help="checkpoint directory or run directory")

    def serve_option(name: str, text: str, **kw):
        config_option(v, ServeConfig, name, text, **kw)

    serve_option("host", "address to bind; anything but loopback exposes the model (then give --api-key)")
    serve_option("port", "TCP port")
    serve_option("api_key", "require `Authorization: Bearer KEY` on the API routes")
    serve_option("model_name", "the model's name in /v1/models (default: the checkpoint directory's name)")
    serve_option("dtype", "the checkpoint's precision in the engine", choices=["auto", "fp32", "bf16", "fp64"])
    serve_option("quantize", "int8: weight-only int8 Linear layers (on a 2-core AVX2 CPU, SmolLM2 at 16 sequences: "
                 "67 against 54 tokens/s in fp32; see `codelm generate --help`)", type=str, choices=["int8"])
    serve_option("max_seqs", "sequences decoding together (1: one request at a time)")
    serve_option("max_queue", "waiting sequences before new requests get 429")
    serve_option("step_tokens", "tokens per scheduler step: one per decoding sequence, the rest prefill chunks")
    serve_option("block_size", "tokens per KV-cache block, the unit of prefix sharing")
    serve_option("cache_tokens", "KV-cache capacity in tokens (0: --max-seqs full contexts)")
    serve_option("max_n", "completions per request at most")
    serve_option("max_stops", "stop strings per request at most")
    v.add_argument("--no-prefix-caching", dest="prefix_caching", action="store_false",
                   help="prefill every prompt whole, even when its prefix is cached")
    v.set_defaults(func=cmd_serve)

    i = sub.add_parser("import", help="import an HF Llama folder or a GGUF file as a codelm checkpoint",
                       description="hf DIR: config.json + safetensors + tokenizer.json (Llama architecture, GQA, "
                       "tied embeddings). gguf FILE: llama-architecture GGUF, dequantized to fp32 (F32, F16, BF16, "
                       "Q8_0, Q4_0, Q4_1, K-quants), with its embedded byte-level BPE tokenizer.")
    i.add_argument("format", choices=["hf", "gguf"])
    i.add_argument("source", help="HF model directory or .gguf file")
    i.add_argument("--out", required=True, help="checkpoint directory to write")
    i.set_defaults(func=cmd_import)

    x = sub.add_parser("export", help="export a checkpoint for transformers",
                       description="Write an HF folder (config.json, model.safetensors, tokenizer.json, "
                       "tokenizer_config.json, generation_config.json) that AutoModelForCausalLM and AutoTokenizer "
                       "load with no conversion code. A LoRA adapter checkpoint exports as its base model plus "
                       "the adapter in PEFT's format in OUT/adapter/, or merged with --merge-lora.")
    x.add_argument("format", choices=["hf"])
    x.add_argument("--checkpoint", required=True, help="checkpoint, adapter or run directory")
    x.add_argument("--out", required=True, help="directory to write")
    x.add_argument("--merge-lora", action="store_true",
                   help="fold a LoRA adapter into the weights (in fp32) and write a plain model")
    x.set_defaults(func=cmd_export)

    sb = command_group(sub, "sandbox", "run untrusted code with the evaluator's isolation")
    sr = sb.add_parser("run", help="run one program (and optional tests) in the sandbox; prints the result",
                       description="Run a Python file (or - for stdin) as the evaluator runs generated code: its "
                       "own process as an unprivileged user, resource limits, a wall-clock timeout, a fresh "
                       "directory, a scrubbed environment, and no network (network and PID namespaces when "
                       "available, else a socket guard). Exit status 0 only when it passed.")
    sr.add_argument("file", help="Python file, or - for standard input")
    sr.add_argument("--tests", help="file of tests run after the program (asserts)")
    for name, text in (("cpu_seconds", "CPU time limit"), ("wall_seconds", "wall-clock limit"),
                       ("memory_mb", "address-space limit in MB")):
        config_option(sr, Limits, name, text)
    sr.set_defaults(func=cmd_sandbox_run)

    e = sub.add_parser("eval", help="evaluate a checkpoint: HumanEval pass@k, infilling, bits per byte, contamination",
                       description="Run evaluation tasks and write OUT/results.json, OUT/samples.jsonl (every "
                       "completion with its prompt, status and error) and OUT/report.md; a training run's report.md "
                       "gains the evaluation section. Generated code runs only in the sandbox (see `codelm sandbox "
                       "run`). Tasks: humaneval (pass@k, unbiased estimator), humaneval-infill-single and "
                       "humaneval-infill-multi (fill-in-the-middle on HumanEval's solutions: pass@1 and exact match), "
                       "mbpp, humaneval+ and mbpp+ (from the files given with --mbpp, --humaneval-plus, --mbpp-plus: "
                       "pass@k as for humaneval), bpb (bits per byte on --data, per language), contamination "
                       "(HumanEval's and the given benchmark files' overlap with --corpus).")
    e.add_argument("--checkpoint", help="checkpoint, run directory, or imported model (not needed for contamination)")
    def eval_option(name: str, text: str, **kw):
        config_option(e, EvalConfig, name, text, **kw)

    e.add_argument("--tasks", type=comma_list, default=["humaneval"], help="comma-separated tasks (default humaneval)")
    e.add_argument("--out", help="output directory (default: CHECKPOINT/eval)")
    eval_option("n", "completions per problem")
    eval_option("temperature", "0: greedy; e.g. 0.8 with --n 20")
    eval_option("top_p", "nucleus sampling when temperature > 0")
    eval_option("k", "pass@k for these k (those <= n)", type=int_list)
    eval_option("limit", "only the first N problems / a fixed sample of N infilling tasks (0: all)")
    eval_option("few_shot", "K other HumanEval problems with solutions as examples")
    e.add_argument("--chat", action="store_true", help="chat prompting: the model's chat template, then the code "
                   "block is extracted from the reply")
    e.add_argument("--cot", action="store_true", help="with --chat: zero-shot chain of thought, a few sentences of "
                   "reasoning before the code block (with --uncertainty: self-consistency over behaviour clusters)")
    e.add_argument("--uncertainty", action="store_true", help="code tasks, with --n >= 2 and a temperature: also the "
                   "greedy answer; every program run on shared inputs (the prompt's examples, then fuzzed) and "
                   "clustered by behaviour; per problem semantic entropy (discrete and likelihood-weighted), naive "
                   "entropy, mean log-prob; AUROC and AURAC of each for predicting failure, pass@1 of the largest "
                   "cluster beside greedy and sampled, bootstrap intervals (OUT/uncertainty.jsonl)")
    eval_option("behaviour_inputs", "--uncertainty: shared inputs per problem")
    e.add_argument("--codet", action="store_true", help="with --uncertainty: the model also writes `assert f(...) "
                   "== ...` tests for each problem (one greedy reply, hidden tests never shown), and CodeT's dual "
                   "agreement (samples x model tests they pass) picks one more answer, reported beside the others")
    eval_option("bootstrap", "--uncertainty: resamples of the problems for the 95%% intervals")
    for name, task, files in (("mbpp", "mbpp", "mbpp.jsonl (full) or sanitized-mbpp.json"),
                              ("humaneval_plus", "humaneval+", "EvalPlus's HumanEvalPlus.jsonl(.gz)"),
                              ("mbpp_plus", "mbpp+", "EvalPlus's MbppPlus.jsonl(.gz)")):
        e.add_argument(f"--{name.replace('_', '-')}", default=field_default(EvalConfig, name), metavar="FILE",
                       help=f"task {task}: {files}, as published (nothing is downloaded); contamination checks "
                       "its items too")
    eval_option("max_new_tokens", "0: 512 for the code tasks, 64 single-line and 256 multi-line infilling")
    eval_option("batch_size", "prompts generated together")
    eval_option("seed", "sampling seed")
    add_engine_args(e)
    e.add_argument("--data", action="append", default=field_default(EvalConfig, "data"),
                   help="bpb: file or directory of code, or a curated corpus (repeatable)")
    e.add_argument("--corpus", action="append", default=field_default(EvalConfig, "corpus"),
                   help="contamination: a `codelm curate` output or code files/directories (default: the corpus "
                   "a training run's token shards came from)")
    e.add_argument("--threshold", dest="contamination_threshold", type=float, metavar="SHARE",
                   default=field_default(EvalConfig, "contamination_threshold"),
                   help="contamination: flag an item whose longest copy covers this share of it (default %(default)s)")
    eval_option("workers", "parallel sandboxes (0: one per core)")
    e.set_defaults(func=cmd_eval)

    sy = command_group(sub, "synth", "instruction data made from code")
    sm = sy.add_parser("mine", help="documented functions of a corpus become chat rows with provenance and tests",
                       description="Every top-level function and method with a docstring becomes a chat row: the "
                       "user asks for the signature and the docstring's behaviour, the assistant answers with the "
                       "function (and the imports it uses) in a python fence. Kept only if it returns a value, uses "
                       "no process/file/network modules, reads no module-level name but imports, is not too long, "
                       "not an exact or near duplicate and not HumanEval material; doctests in the docstring run in "
                       "the sandbox against the function: it is dropped if it fails them, else its examples become "
                       "the row's asserts. Writes OUT (JSONL) and the stats beside it (rows, drops per reason).")
    sm.add_argument("--corpus", required=True, help="a `codelm curate` output directory, or a directory or file "
                    "of Python code")
    sm.add_argument("--out", required=True, help="the JSONL file to write (NAME.jsonl; NAME.stats.json beside it)")

    def mine_option(name: str, text: str, **kw):
        config_option(sm, MineConfig, name, text, **kw)

    mine_option("max_lines", "drop functions longer than this many lines (docstring and decorators included)")
    mine_option("max_chars", "drop functions longer than this many characters")
    mine_option("limit", "stop after this many rows (0: all)")
    mine_option("seed", "chooses each row's phrasing of the request")
    mine_option("workers", "parallel sandboxes for the doctests (0: one per core)")
    sm.add_argument("--no-tests", dest="tests", action="store_false",
                    help="do not run doctests: no sandbox, rows without asserts, failing doctests not caught")
    sm.set_defaults(func=cmd_synth_mine)

    so = sy.add_parser("oss-instruct", help="a teacher writes problems, solutions and tests from corpus snippets",
                       description="OSS-Instruct (Magicoder): N random snippets of the corpus's Python files "
                       "(seeded) each prompt the teacher for a self-contained problem, a Python solution and "
                       "assert tests, in [Problem] / [Solution] / [Tests] sections. A reply that is unfinished, "
                       "does not parse, uses process/file/network modules, duplicates an earlier solution (exact or "
                       "near), overlaps HumanEval or fails its tests in the sandbox is dropped and counted. Writes "
                       "OUT (JSONL rows with provenance) and the stats beside it.")
    so.add_argument("--corpus", required=True, help="a `codelm curate` output directory, or a directory or file "
                    "of Python code")
    so.add_argument("--out", required=True, help="the JSONL file to write (NAME.jsonl; NAME.stats.json beside it)")
    add_teacher_args(so)

    def oss_option(name: str, text: str, **kw):
        config_option(so, OssInstructConfig, name, text, **kw)

    oss_option("n", "snippets drawn, one teacher request each (rows kept are fewer)")
    oss_option("seed", "picks the snippets and seeds the teacher's sampling")
    oss_option("min_lines", "a snippet's lines, at least")
    oss_option("max_lines", "a snippet's lines, at most")
    oss_option("temperature", "the teacher's sampling temperature; 0: greedy")
    oss_option("top_p", "nucleus sampling when temperature > 0")
    oss_option("max_new_tokens", "the reply's tokens at most; a reply cut here is dropped")
    oss_option("workers", "parallel sandboxes for the tests (0: one per core)")
    so.add_argument("--require-tests", action="store_true",
                    help="drop replies without tests (default: keep them untested, with no tests in the row)")
    so.set_defaults(func=cmd_synth_oss_instruct)

    sg = sy.add_parser("magpie", help="a teacher invents requests from its chat template's pre-query prefix, "
                       "then answers them",
                       description="Magpie: the teacher continues its chat template's text up to where a user's "
                       "words begin (e.g. '<|im_start|>user\\n') and so writes a request, ending at its end of "
                       "turn; then it answers that request as a chat. Requests that are unfinished, empty, too "
                       "short, duplicates (exact or near) or HumanEval material are dropped, as are unfinished or "
                       "empty answers, answers whose Python does not parse or that overlap HumanEval, and (with "
                       "--code-only) answers without Python. Writes OUT (JSONL rows with provenance) and the stats "
                       "beside it.")
    sg.add_argument("--out", required=True, help="the JSONL file to write (NAME.jsonl; NAME.stats.json beside it)")
    add_teacher_args(sg)

    def magpie_option(name: str, text: str, **kw):
        config_option(sg, MagpieConfig, name, text, **kw)

    magpie_option("n", "requests invented, one teacher request each and one more per answer (rows kept are fewer)")
    magpie_option("seed", "seeds the teacher's sampling")
    magpie_option("system", "a system message before the user's turn, to steer the requests (kept in the rows)")
    magpie_option("instruction_temperature", "sampling temperature of the requests; 0: greedy (all alike)")
    magpie_option("instruction_top_p", "nucleus sampling of the requests")
    magpie_option("max_instruction_tokens", "a request not ended within this many tokens is dropped")
    magpie_option("min_instruction_words", "a request of fewer words is dropped")
    magpie_option("temperature", "sampling temperature of the answers; 0: greedy")
    magpie_option("max_new_tokens", "an answer's tokens at most; an answer cut here is dropped")
    sg.add_argument("--code-only", action="store_true",
                    help="drop answers without a python code block (default: keep requests of any kind)")
    sg.set_defaults(func=cmd_synth_magpie)

    sc = command_group(sub, "scaling", "scaling laws: FLOPs accounting, IsoFLOP sweeps, Chinchilla fits")
    sp = sc.add_parser("plan", help="a config's exact FLOPs per token beside 6N, and the compute-optimal N, D for a "
                       "budget", description="Count a config's parameters three ways (total, non-embedding, matmul), "
                       "its exact training FLOPs per token beside 6N, the tokens a budget buys it, and the "
                       "compute-optimal model size and tokens for the budget under a scaling law.")
    sp.add_argument("--flops", type=float, required=True, help="the compute budget in training FLOPs, e.g. 1e21")
    sp.add_argument("--config", default=str(TRAINING_CONFIG), help="model config (default: the speedrun's tiny.toml)")
    sp.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    sp.add_argument("--law", default="chinchilla", help="chinchilla (Hoffmann et al. 2022), besiroglu (their 2024 "
                    "refit), or a law.json from `codelm scaling fit` (default %(default)s)")
    sp.set_defaults(func=cmd_scaling_plan)

    sw = sc.add_parser("sweep", help="train an IsoFLOP grid (budgets x depths) to budget; resumable",
                       description="Train every budget x depth of one model family (depth d: d layers of width "
                       "ASPECT x d, d heads) with the shared trainer, each for budget / exact FLOPs per token, into "
                       "OUT/runs/NAME; finished runs are skipped, interrupted ones resume. Writes OUT/results.csv "
                       "and OUT/results.md (the conventions and the table). Sets train.compile=false and validates "
                       "only at the end, before --set.")
    sw.add_argument("--tokens", required=True, help="a `codelm tokenize` output directory (its tokenizer sets the "
                    "vocabulary)")
    sw.add_argument("--out", required=True, help="the sweep directory")

    def sweep_option(name: str, text: str, **kw):
        config_option(sw, SweepConfig, name, text, **kw)

    sweep_option("config", "training settings; the family replaces the model's shape")
    sweep_option("budgets", "comma-separated training FLOPs per run", type=float_list)
    sweep_option("depths", "comma-separated depths, the family's size knob", type=int_list)
    sweep_option("aspect", "width per unit of depth, and head size")
    sweep_option("min_steps", "runs with fewer optimizer steps are left out")
    sw.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a training config key")
    sw.add_argument("--emit-commands", action="store_true", help="write each pending run's config.toml and print "
                    "one `codelm pretrain` command per run (for a cluster) instead of training; rerun without it to "
                    "collect the table")
    sw.set_defaults(func=cmd_scaling_sweep)

    sf = sc.add_parser("fit", help="Chinchilla's three approaches on a sweep, bootstrap intervals, plots",
                       description="Approach 1 (the lowest-loss run per budget), approach 2 (a parabola in ln N per "
                       "budget, minima fitted as power laws in C) and approach 3 (L = E + A/N^alpha + B/D^beta, "
                       "Huber loss on log-loss summed over runs, L-BFGS from a grid of starts) with bootstrap "
                       "intervals; writes fit.md, fit.json, law.json, isoflop.png and frontier.png.")
    sf.add_argument("results", help="a sweep directory, or its results.csv")

    def fit_option(name: str, text: str, **kw):
        config_option(sf, FitConfig, name, text, **kw)

    fit_option("out", "output directory (default: the sweep's)")
    fit_option("params", "the parameter count used as N", choices=PARAM_CONVENTIONS)
    fit_option("bootstrap", "resamples for the 95%% intervals (0: none)")
    fit_option("seed", "the resampling seed")
    sf.set_defaults(func=cmd_scaling_fit)
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except UserError as e:
        print(f"codelm: error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("codelm: interrupted", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
