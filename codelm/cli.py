"""`codelm <command>`: one entry point; each command parses its arguments and calls one stage."""

import argparse
import json
import sys

from codelm.data.tokenize import DEFAULT_VAL_FRACTION
from codelm.errors import UserError

DATA_HELP = ("a `codelm curate` output directory, or files/directories of code read as they are (repeatable); "
             "default: the Python standard library of this interpreter")


def cmd_speedrun(args):
    from codelm.speedrun import speedrun

    speedrun(data=args.data, out=args.out, minutes=args.minutes, max_steps=args.max_steps,
             config=args.config, overrides=args.set, vocab_size=args.vocab_size)


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
    from codelm.data.tokenize import train_tokenizer_on_corpus

    tok, docs = train_tokenizer_on_corpus(args.data, args.out, args.vocab_size, args.val_fraction)
    print(f"tokenizer: {tok.vocab_size} tokens, trained on {docs} documents -> {args.out}")


def cmd_tokenize(args):
    from codelm.data.tokenize import tokenize_corpus

    stats = tokenize_corpus(args.data, args.tokenizer, args.out, args.val_fraction)
    print(json.dumps(stats, indent=2))


def cmd_pretrain(args):
    from codelm.config import load_config
    from codelm.train.pretrain import pretrain

    pretrain(load_config(args.config, args.set), resume=args.resume)


def cmd_sample(args):
    from codelm.inference.sampling import complete, fill_in_middle
    from codelm.train.checkpoint import load_model

    model, tok, _ = load_model(args.checkpoint)
    kwargs = dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k, seed=args.seed)
    if args.suffix is not None:
        print(args.prompt + fill_in_middle(model, tok, args.prompt, args.suffix, **kwargs) + args.suffix)
    else:
        print(args.prompt + complete(model, tok, args.prompt, **kwargs))


def cmd_eval_loss(args):
    from codelm.eval.bpb import evaluate_path

    result = evaluate_path(args.checkpoint, args.data, args.seq_len, args.batch)
    print(json.dumps(result, indent=2))


def add_corpus_args(parser: argparse.ArgumentParser):
    """--data and --val-fraction: the same corpus and split for the tokenizer and the shards."""
    parser.add_argument("--data", action="append", help=DATA_HELP)
    parser.add_argument("--val-fraction", type=float, default=DEFAULT_VAL_FRACTION,
                        help="fraction of files held out, chosen by path hash (default %(default)s)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="codelm", description="Build code language models end to end.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("speedrun", help="the whole pipeline on the stdlib (or --data) in about ten minutes",
                       description="Curate a corpus (default: this Python's standard library; file-level), "
                       "split train/validation by path hash, train a tokenizer, tokenize, pretrain configs/tiny.toml, "
                       "evaluate, sample, and write OUT/report.md.")
    s.add_argument("--data", action="append", help=DATA_HELP)
    s.add_argument("--out", default=None, help="run directory (default: runs/speedrun-<timestamp>)")
    s.add_argument("--minutes", type=float, default=None, help="training time budget (default: the config's, 10)")
    s.add_argument("--max-steps", type=int, default=None, help="train exactly this many steps instead of a time budget")
    s.add_argument("--config", default=None, help="model/training config (default: configs/tiny.toml)")
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    s.add_argument("--vocab-size", type=int, default=8192)
    s.set_defaults(func=cmd_speedrun)

    c = sub.add_parser("curate", help="curate a code corpus: filter, redact, dedup, decontaminate, order, mix",
                       description="Run the datatrove curation pipeline (quality filters, PII/secret redaction, "
                       "HumanEval decontamination, exact + MinHash near-dedup, optional repository-level documents) "
                       "and write OUT/data/<source>/*.parquet, OUT/stats.json and OUT/DATA_CARD.md. With no config "
                       "and no --data it curates this Python's standard library. See configs/data.toml.")
    c.add_argument("--config", default=None, help="curation config TOML (sources, filters, dedup, mix, executor)")
    c.add_argument("--data", action="append", help="directory, git work tree, or Stack-shaped .jsonl/.parquet "
                   "(repeatable; replaces the config's sources)")
    c.add_argument("--out", required=True, help="output directory (replaced atomically when done)")
    c.add_argument("--tasks", type=int, default=0, help="parallel shards (default: one per CPU core)")
    c.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set dedup.threshold=0.8 (repeatable)")
    c.set_defaults(func=cmd_curate)

    d = sub.add_parser("data", help="inspect curated data").add_subparsers(dest="sub", required=True, metavar="SUB")
    ds = d.add_parser("stats", help="print the documents/languages/removals table of a curated corpus")
    ds.add_argument("dir", help="a `codelm curate` output directory")
    ds.set_defaults(func=cmd_data_stats)

    t = sub.add_parser("tokenizer", help="tokenizer commands").add_subparsers(dest="sub", required=True, metavar="SUB")
    tt = t.add_parser("train", help="train byte-level BPE on a corpus's training split",
                      description="Train byte-level BPE (digits split, whitespace runs kept, codelm's special tokens) "
                      "on the training split of a corpus and save tokenizer.json.")
    add_corpus_args(tt)
    tt.add_argument("--out", required=True, help="where to write tokenizer.json")
    tt.add_argument("--vocab-size", type=int, default=8192)
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
                       "torchrun --nproc_per_node N -m codelm pretrain ...")
    r.add_argument("--config", default=None, help="TOML config (see configs/)")
    r.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set train.max_steps=100 (repeatable)")
    r.add_argument("--resume", action="store_true", help="continue from train.out_dir/checkpoints/latest")
    r.set_defaults(func=cmd_pretrain)

    m = sub.add_parser("sample", help="complete a prompt, or fill in the middle with --suffix",
                       description="Generate from a checkpoint: continue --prompt, or with --suffix fill the middle "
                       "between --prompt and --suffix (PSM prompt). Temperature 0 is greedy.")
    m.add_argument("--checkpoint", required=True, help="checkpoint directory or run directory")
    m.add_argument("--prompt", default="", help="text to continue (the prefix with --suffix)")
    m.add_argument("--suffix", default=None, help="text after the gap: fill-in-the-middle mode")
    m.add_argument("--max-new-tokens", type=int, default=128)
    m.add_argument("--temperature", type=float, default=0.0)
    m.add_argument("--top-k", type=int, default=0)
    m.add_argument("--seed", type=int, default=0)
    m.set_defaults(func=cmd_sample)

    e = sub.add_parser("eval-loss", help="loss and bits-per-byte of a checkpoint on any code",
                       description="Loss per token and bits per byte (comparable across tokenizers) of a checkpoint "
                       "on a file or directory of code.")
    e.add_argument("--checkpoint", required=True)
    e.add_argument("--data", action="append", required=True, help="file or directory of code (repeatable)")
    e.add_argument("--seq-len", type=int, default=0, help="context per row (default: the model's)")
    e.add_argument("--batch", type=int, default=16)
    e.set_defaults(func=cmd_eval_loss)
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
