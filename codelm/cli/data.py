"""Data commands: curate a corpus, inspect it, train a tokenizer on it, tokenize it."""

import json
from dataclasses import asdict
from pathlib import Path

from codelm.cli.options import Settings, add_command, add_group, resolve, sections_root, write_config
from codelm.config import TokenizeConfig, TokenizerTrainConfig


def curate(sub, name, text):
    from codelm.data.pipeline import CurateConfig

    sections = ("sources", "layout", "filters", "pii", "decontam", "dedup", "mix", "executor")
    parser = add_command(sub, name, text, (
        "Run the datatrove curation pipeline (quality filters, PII/secret redaction, HumanEval decontamination, "
        "exact and MinHash near-dedup, optional repository-level documents) and write OUT/data/<source>/*.parquet, "
        "OUT/stats.json, OUT/DATA_CARD.md and OUT/config.toml. With no sources configured and no --data it curates "
        "this Python's standard library. codelm/configs/data.toml is an example config."), run_curate,
        Settings(CurateConfig, sections, flags={"--tasks": "executor.tasks"}))
    parser.add_argument("--data", action="append", help="directory, git work tree, or Stack-shaped .jsonl/.parquet "
                        "(repeatable; replaces the configured sources)")
    parser.add_argument("--out", required=True, help="output directory (replaced atomically when done)")


def run_curate(args):
    from codelm.data.card import load_stats, stats_table
    from codelm.data.pipeline import curate, with_data

    cfg = with_data(resolve(args), args.data or [])
    out = curate(cfg, args.out)
    if (out / "stats.json").is_file():  # not yet when Slurm jobs were only submitted
        write_config(cfg, args.settings, out / "config.toml")
        print(stats_table(load_stats(out)), end="")
        print(f"curated corpus -> {out} (DATA_CARD.md, stats.json, config.toml, data/)")


def data(sub, name, text):
    parser = add_command(add_group(sub, name, text), "stats", "print the documents/languages/removals table of a "
                         "curated corpus", "Print the table of a curated corpus's stats.json.", run_data_stats)
    parser.add_argument("dir", help="a `codelm curate` output directory")


def run_data_stats(args):
    from codelm.data.card import load_stats, stats_table

    print(stats_table(load_stats(args.dir)), end="")


TOKENIZER = Settings(sections_root("tokenizer", tokenizer=TokenizerTrainConfig), ("tokenizer",), every_field=True)
TOKENIZE = Settings(sections_root("tokenize", tokenize=TokenizeConfig), ("tokenize",), every_field=True)


def tokenizer(sub, name, text):
    add_command(add_group(sub, name, text), "train", "train byte-level BPE on a corpus's training split", (
        "Train byte-level BPE (digits split, whitespace runs kept, codelm's special tokens) on the training split "
        "of a corpus and save it as OUT (tokenizer.json), with the settings beside it (OUT's name with "
        ".config.toml)."), run_tokenizer_train, TOKENIZER)


def run_tokenizer_train(args):
    from codelm.data.corpus import train_tokenizer_on_corpus

    root = resolve(args)
    cfg = root.tokenizer
    tok, docs = train_tokenizer_on_corpus(cfg.data or None, cfg.out, cfg.vocab_size, cfg.val_fraction)
    write_config(root, TOKENIZER, Path(cfg.out).with_suffix(".config.toml"))
    print(f"tokenizer: {tok.vocab_size} tokens, trained on {docs} documents -> {cfg.out}")


def tokenize(sub, name, text):
    add_command(sub, name, text, (
        "Read a curated corpus (or raw files), split by path hash, apply the curated source mix to the training "
        "split, and write OUT/train and OUT/val token shards, OUT/tokenizer.json, OUT/stats.json (with the mix "
        "realized in tokens) and OUT/config.toml."), run_tokenize, TOKENIZE)


def run_tokenize(args):
    from codelm.data.corpus import tokenize_corpus

    root = resolve(args)
    stats = tokenize_corpus(root.tokenize.data or None, root.tokenize.tokenizer, root.tokenize.out,
                            root.tokenize.val_fraction)
    write_config(root, TOKENIZE, Path(root.tokenize.out) / "config.toml")
    print(json.dumps(asdict(stats), indent=2))
