"""Command-line options made from the config dataclasses, so each setting is described once.

A command's settings are sections of a root config (Settings). Every command that has settings takes
`--config FILE` (TOML) and `--set KEY=VALUE`; its shortcut flags (`--init-from`, `--lora-r`, or every field of
a small command such as eval) are generated from the fields they set: the flag's type, choices, default and
help text come from the field (codelm.config.knob). `--help` lists the keys that have no flag. Precedence:
field defaults, then the command's default file or --config, then flags, then --set.
"""

import argparse
import dataclasses
import os
import sys
import textwrap
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from codelm.config import (
    apply_settings,
    check,
    choices_of,
    help_of,
    nested,
    parse_setting,
    read_toml,
    to_toml,
    toml_value,
)
from codelm.errors import UserError
from codelm.io import atomic_write_text

CONFIGS = Path(__file__).resolve().parents[1] / "configs"  # package data: the recipes' default TOMLs


class WrappingFormatter(argparse.HelpFormatter):
    """Wraps descriptions and epilogs by paragraph, keeping indented lines (the config key listing) as written."""

    def _fill_text(self, text, width, indent):
        paragraphs = []
        for paragraph in text.split("\n\n"):
            if paragraph.startswith("  "):
                paragraphs.append(paragraph)
            else:
                paragraphs.append(textwrap.fill(" ".join(paragraph.split()), width, initial_indent=indent,
                                                subsequent_indent=indent))
        return "\n\n".join(paragraphs)


def add_command(sub, name: str, text: str, description: str, run, settings: "Settings | None" = None):
    """A command's parser: its one-line help, its description, its settings' options, and what runs it."""
    parser = sub.add_parser(name, help=text, description=description, formatter_class=WrappingFormatter)
    if settings is not None:
        add_settings(parser, settings)
    parser.set_defaults(run=run)
    return parser


def add_group(sub, name: str, text: str):
    """A command with subcommands of its own (`codelm synth mine`, ...)."""
    return sub.add_parser(name, help=text).add_subparsers(dest="sub", required=True, metavar="SUB")


def sections_root(name: str, **sections: type) -> Callable[[], object]:
    """A root config holding these sections (e.g. eval=EvalConfig), for commands without a root of their own."""
    fields = [(section, cls, field(default_factory=cls)) for section, cls in sections.items()]
    return dataclasses.make_dataclass(f"{name.title().replace('-', '')}Settings", fields)


@dataclass
class Settings:
    """What a command reads: a root config, which of its sections, and which fields get their own flag."""

    root: Callable[[], object]
    sections: tuple[str, ...]
    flags: dict[str, str] = field(default_factory=dict)  # shortcut flag -> key ("--init-from": "train.init_from")
    every_field: bool = False  # every field of the sections gets a flag named after it (--n for eval.n)
    default_file: Path | None = None  # read when no --config is given (a recipe's defaults)
    positional: dict[str, str] = field(default_factory=dict)  # positional argument -> config key
    no_flag: tuple[str, ...] = ()  # keys that every_field leaves to --set (those a command refuses, or lists)

    def defaults(self):
        """The root as the command starts from it, before --config, flags and --set (not yet checked)."""
        cfg = self.root()
        if self.default_file is not None:
            apply_settings(cfg, read_toml(self.default_file))
        return cfg


def leaves(cfg, prefix: str = ""):
    """(key, field, type) of every setting under a config, depth first; lists of tables are one setting."""
    hints = typing.get_type_hints(type(cfg))
    for f in dataclasses.fields(cfg):
        key = f"{prefix}{f.name}"
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            yield from leaves(value, f"{key}.")
        else:
            yield key, f, hints[f.name]


def lookup(cfg, key: str):
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg


def shown(value) -> str:
    """A default as the user would type it."""
    if isinstance(value, list):
        return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value) or "none"
    if isinstance(value, bool):
        return str(value).lower()
    return repr(value) if value == "" else str(value)


def flag_name(key: str) -> str:
    return "--" + key.rsplit(".", 1)[-1].replace("_", "-")


def comma_list(item_type):
    def parse(text: str) -> list:
        try:
            return [item_type(part.strip()) for part in text.split(",") if part.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {item_type.__name__} values, got {text!r}")

    return parse


def option_kwargs(key: str, f: dataclasses.Field, kind, default) -> dict:
    """argparse keywords for a flag that sets `key`: its type, choices and help from the field."""
    text = f"{help_of(f)} ({key}; default {shown(default)})"
    metavar = f.metadata.get("metavar") or key.rsplit(".", 1)[-1].upper()
    kw = {"dest": key.replace(".", "__"), "default": None, "help": text.replace("%", "%%")}
    choices = choices_of(kind)
    if kind is bool:
        return kw | {"action": argparse.BooleanOptionalAction}
    if choices is not None:
        return kw | {"choices": choices, "metavar": "{" + ",".join(choices) + "}"}
    if typing.get_origin(kind) is list:
        (item,) = typing.get_args(kind)
        if f.metadata.get("comma"):
            return kw | {"type": comma_list(item), "metavar": "A,B,..."}
        return kw | {"type": item, "action": "append", "metavar": metavar}
    return kw | {"type": kind, "metavar": metavar}


def add_settings(parser: argparse.ArgumentParser, settings: Settings):
    """--config, --set, the flags and positionals of `settings`, and the listing of the keys without a flag."""
    defaults = settings.defaults()
    keys = {key: (f, kind) for key, f, kind in leaves(defaults) if key.split(".")[0] in settings.sections}
    flags = dict(settings.flags)
    if settings.every_field:
        taken = {*settings.no_flag, *flags.values(), *settings.positional.values()}
        flags |= {flag_name(key): key for key in keys if key not in taken}
    for name, key in [*settings.positional.items(), *flags.items()]:
        f, kind = keys[key]
        kw = option_kwargs(key, f, kind, lookup(defaults, key))
        if name.startswith("--"):
            parser.add_argument(name, **kw)
        else:
            parser.add_argument(kw.pop("dest"), **(kw | {"nargs": "?", "metavar": name}))
    default_file = f" (default: codelm/configs/{settings.default_file.name})" if settings.default_file else ""
    parser.add_argument(
        "--config", metavar="FILE", help=f"settings as TOML{default_file}; a run's config.toml replays it"
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="set a config key, e.g. --set " + next(k for k in keys if "." in k) + "=... (repeatable)",
    )
    unflagged = [key for key in keys if key not in flags.values() and key not in settings.positional.values()]
    if unflagged:
        listing = "\n".join(
            f"  {key} = {shown(lookup(defaults, key))}{choice_text(keys[key][1])}\n"
            + textwrap.fill(help_of(keys[key][0]), 100, initial_indent=" " * 6, subsequent_indent=" " * 6)
            for key in unflagged
        )
        parser.epilog = (f"config keys (--set KEY=VALUE, or in the --config file):\n\n{listing}").replace("%", "%%")
    parser.set_defaults(settings=settings)


def choice_text(kind) -> str:
    choices = choices_of(kind)
    return f"  {{{','.join(choices)}}}" if choices else ""


def given(args) -> dict:
    """The config keys that flags and positionals on the command line set, with their values."""
    return {dest.replace("__", "."): value for dest, value in vars(args).items() if "__" in dest and value is not None}


def resolve(args):
    """The command's root config: defaults, its default file or --config, flags, then --set; checked.

    Keys outside the command's sections are refused: a setting the command would not read is a mistake."""
    settings: Settings = args.settings
    cfg = settings.root()
    layers = [
        read_toml(args.config) if args.config else read_toml(settings.default_file) if settings.default_file else {}
    ]
    layers += [nested(key, value) for key, value in given(args).items()]
    layers += [parse_setting(text) for text in args.set]
    for layer in layers:
        outside = sorted(set(layer) - set(settings.sections))
        if outside:
            command = " ".join(filter(None, [args.command, getattr(args, "sub", None)]))
            raise UserError(
                f"codelm {command}: no section {', '.join(outside)} here (it reads {', '.join(settings.sections)})"
            )
        apply_settings(cfg, layer)
    check(cfg)
    return cfg


def recipe_settings(args) -> list[str]:
    """The flags given, as KEY=VALUE settings for a stage that loads its config itself (the speedrun)."""
    return [f"{key}={toml_value(value)}" for key, value in given(args).items()]


def write_config(cfg, settings: Settings, path: str | Path):
    """The resolved settings, only the sections the command reads, where `--config` can replay them."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(Path(path), to_toml(cfg, settings.sections))


def read_input(path: str) -> str:
    """Text of a file the user named (- is standard input); a missing file is a one-line error."""
    if path == "-":
        return sys.stdin.read()
    if not os.path.isfile(path):
        raise UserError(f"file not found: {path}")
    with open(path) as f:
        return f.read()
