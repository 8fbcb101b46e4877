"""`codelm speedrun`: the whole pipeline on one corpus, sized for the machine (codelm.speedrun)."""

from codelm.cli.options import CONFIGS, Settings, add_command, recipe_settings, resolve
from codelm.config import DATA_HELP, LADDER, RECIPE_SECTIONS, Config

SETTINGS = Settings(Config, RECIPE_SECTIONS["pretrain"], default_file=CONFIGS / "tiny.toml",
                    flags={"--minutes": "train.max_minutes", "--max-steps": "train.max_steps",
                           "--vocab-size": "model.vocab_size"})


def speedrun(sub, name, text):
    parser = add_command(sub, name, text, (
        "Curate a corpus (default: this Python's standard library), split train/validation by path hash, train a "
        "tokenizer, tokenize, pretrain codelm/configs/tiny.toml for the time budget, evaluate (bits per byte, "
        "HumanEval, contamination), sample, mine instructions for a short SFT, and write OUT/report.md. Rerun "
        "with the same --out to reuse finished stages and resume training."), run, SETTINGS)
    parser.add_argument("--data", action="append", help=DATA_HELP)
    parser.add_argument("--out", help="run directory (default: runs/speedrun-<timestamp>)")
    parser.add_argument("--shape", default="auto", choices=["auto", "config", *[s.name for s in LADDER]],
                        help="model shape: auto (default) times a ladder of shapes here and takes the largest that "
                        "sees enough tokens per parameter in the budget; config keeps the config file's; or a shape")


def run(args):
    from codelm.speedrun import speedrun as run_pipeline

    resolve(args)  # a bad key or value stops here, before any work
    run_pipeline(data=args.data, out=args.out, config=args.config, overrides=[*recipe_settings(args), *args.set],
                 shape=args.shape)
