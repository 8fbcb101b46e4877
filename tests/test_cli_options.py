"""The CLI's options come from the config fields: defaults, choices and help are written once, and every
command that has settings takes --config and --set the same way."""

import argparse
import ast
import dataclasses
import subprocess
import sys

import pytest
from conftest import REPO

from codelm.cli import COMMANDS, build_parser, main
from codelm.cli.options import leaves, lookup, shown
from codelm.config import help_of

CLI = REPO / "codelm" / "cli"


def leaf_parsers(parser: argparse.ArgumentParser, path: str = ""):
    sub = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
    if sub is None:
        yield path, parser
        return
    for name, child in sub.choices.items():
        yield from leaf_parsers(child, f"{path} {name}".strip())


PARSERS = dict(leaf_parsers(build_parser()))
WITH_SETTINGS = {name: p for name, p in PARSERS.items() if p.get_default("settings") is not None}


def test_every_command_with_settings_takes_config_and_set():
    assert set(PARSERS) - set(WITH_SETTINGS) == {"data stats", "import", "export"}  # inputs and outputs only
    for name, parser in WITH_SETTINGS.items():
        assert {"--config", "--set"} <= set(parser._option_string_actions), name


@pytest.mark.parametrize("name", sorted(WITH_SETTINGS))
def test_options_carry_the_field_default_help_and_choices(name):
    parser = WITH_SETTINGS[name]
    settings = parser.get_default("settings")
    defaults = settings.defaults()
    fields = {key: (f, kind) for key, f, kind in leaves(defaults) if key.split(".")[0] in settings.sections}
    assert fields, name
    for key, (f, _) in fields.items():
        assert help_of(f), f"codelm {name}: config key {key} has no help text"
    backed = [a for a in parser._actions if "__" in a.dest]
    assert backed or settings.flags == {} and not settings.every_field
    for action in backed:
        key = action.dest.replace("__", ".")
        f, kind = fields[key]
        assert action.default is None  # not given: the config's value stands
        assert action.help.replace("%%", "%") == f"{help_of(f)} ({key}; default {shown(lookup(defaults, key))})"
        if action.choices is not None:
            assert tuple(action.choices) == kind.__args__
    flagged = {a.dest.replace("__", ".") for a in backed}
    for key in set(fields) - flagged:  # the rest are listed in --help
        assert f"  {key} = " in (parser.epilog or ""), f"codelm {name}: {key} is neither a flag nor listed"


def test_help_text_lives_in_the_config_only():
    """No config field's help is restated in the CLI's source."""
    source = "\n".join(p.read_text() for p in CLI.glob("*.py"))
    for name, parser in WITH_SETTINGS.items():
        settings = parser.get_default("settings")
        for key, f, _ in leaves(settings.defaults()):
            text = help_of(f)
            assert len(text) < 20 or text not in source, f"{key}'s help is written in codelm/cli too"


def test_rl_help_names_the_policy_gradient_settings(capsys):
    with pytest.raises(SystemExit):
        main(["rl", "--help"])
    out = capsys.readouterr().out
    for key in ("rl.kl = none  {none,k1,k3}", "rl.kl_coef = 0.0", "rl.epsilon_low = 0.2", "rl.epsilon_high",
                "rl.advantage = group_zscore  {group_mean,group_zscore,rloo,batch}",
                "rl.aggregation = sequence  {sequence,token,constant}"):
        assert key in out, key


def test_set_is_checked_against_the_commands_sections_and_choices(capsys):
    for argv, message in [(["reward-model", "--set", "lora.r=8"], "no section lora here"),
                          (["rl", "--set", "rl.kl=k2"], "'rl.kl' must be one of none, k1, k3"),
                          (["eval", "--set", "eval.engine.dtype=fp16"], "must be one of auto, fp32, bf16, fp64"),
                          (["serve", "--checkpoint", "x", "--set", "serve.engine.compile=true"], "not compiled"),
                          (["scaling", "fit"], "give the sweep's results")]:
        with pytest.raises(SystemExit) as exit:
            main(argv)
        err = capsys.readouterr().err
        assert exit.value.code == 2 and message in err and len(err.strip().splitlines()) == 1, (argv, err)


def test_flags_then_set_override_the_config_file(tmp_path):
    from codelm.cli.options import resolve

    config = tmp_path / "eval.toml"
    config.write_text('[eval]\nn = 3\ntemperature = 0.5\nlimit = 7\n[eval.engine]\ndtype = "fp64"\n')
    args = build_parser(["eval"]).parse_args(["eval", "--config", str(config), "--n", "4", "--set", "eval.limit=2",
                                               "--checkpoint", "c"])
    cfg = resolve(args).eval
    assert (cfg.n, cfg.temperature, cfg.limit, cfg.engine.dtype, cfg.checkpoint) == (4, 0.5, 2, "fp64", "c")


def test_no_cli_function_is_long():
    for path in CLI.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef):
                length = node.end_lineno - node.lineno + 1
                assert length <= 60, f"{path.name}: {node.name} is {length} lines"


def test_top_level_help_imports_no_command():
    """`codelm --help` lists every command without importing one (they pull in torch and datatrove)."""
    code = ("import sys; from codelm.cli import main\ntry: main(['--help'])\nexcept SystemExit: pass\n"
            "print(sorted(m for m in sys.modules if m.startswith(('torch', 'datatrove', 'codelm.cli.'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.splitlines()[-1] == "['codelm.cli.options']"
    assert all(f"    {name}" in out for name in COMMANDS)


def test_resolved_config_round_trips(tmp_path):
    """What write_config writes, --config reads back to the same settings."""
    from codelm.cli.options import resolve, write_config

    for name in ("eval", "serve", "synth magpie", "scaling sweep", "sft"):
        argv = {"eval": ["--checkpoint", "c", "--n", "2", "--temperature", "0.8", "--data", "a", "--data", "b"],
                "serve": ["--checkpoint", "c", "--quantize", "int8", "--no-prefix-caching"],
                "synth magpie": ["--out", "o.jsonl", "--teacher-url", "http://x/v1", "--system", 'say "hi"\n'],
                "scaling sweep": ["--tokens", "t", "--out", "o", "--train-set", "optim.lr=0.1", "--budgets", "1e12"],
                "sft": ["--init-from", "c", "--data", "d.jsonl", "--lora-r", "4"]}[name]
        full = [*name.split(), *argv]
        args = build_parser([name.split()[0]]).parse_args(full)
        cfg = resolve(args)
        path = tmp_path / f"{name.replace(' ', '-')}.toml"
        write_config(cfg, args.settings, path)
        again = resolve(build_parser([name.split()[0]]).parse_args([*name.split(), "--config", str(path)]))
        assert dataclasses.asdict(again) == dataclasses.asdict(cfg), name
