"""`codelm synth`: instruction data mined from code (mine) or written by a teacher (oss-instruct, magpie)."""

from pathlib import Path

from codelm.cli.options import Settings, add_command, add_group, resolve, sections_root, write_config
from codelm.synth.config import MagpieConfig, MineConfig, OssInstructConfig


def teacher_flags(section: str) -> dict:
    return {"--teacher": f"{section}.teacher.checkpoint", "--teacher-url": f"{section}.teacher.url",
            "--teacher-model": f"{section}.teacher.model"}


SETTINGS = {
    "mine": Settings(sections_root("mine", mine=MineConfig), ("mine",), every_field=True),
    "oss-instruct": Settings(sections_root("oss-instruct", oss_instruct=OssInstructConfig), ("oss_instruct",),
                             every_field=True, flags=teacher_flags("oss_instruct")),
    "magpie": Settings(sections_root("magpie", magpie=MagpieConfig), ("magpie",), every_field=True,
                       flags=teacher_flags("magpie")),
}
DESCRIPTIONS = {
    "mine": "Every top-level function and method with a docstring becomes a chat row: the user asks for the "
            "signature and the docstring's behaviour, the assistant answers with the function. Kept only if it "
            "returns a value, uses no process/file/network modules, reads no module-level name but imports, is not "
            "too long, not a duplicate and not HumanEval material; doctests run in the sandbox (a function failing "
            "them is dropped, else its examples become the row's asserts).",
    "oss-instruct": "OSS-Instruct (Magicoder): random snippets of the corpus's Python files each prompt the teacher "
                    "for a self-contained problem, a solution and assert tests. A reply that is unfinished, does "
                    "not parse, uses process/file/network modules, duplicates an earlier solution, overlaps "
                    "HumanEval or fails its tests in the sandbox is dropped and counted.",
    "magpie": "Magpie: the teacher continues its chat template up to where a user's words begin, and so writes a "
              "request; then it answers that request as a chat. Unfinished, empty, too short, duplicate or "
              "HumanEval-like requests are dropped, as are unfinished answers and answers whose Python does not "
              "parse.",
}
HELP = {"mine": "documented functions of a corpus become chat rows with provenance and tests",
        "oss-instruct": "a teacher writes problems, solutions and tests from corpus snippets",
        "magpie": "a teacher invents requests from its chat template's pre-query prefix, then answers them"}


def synth(sub, name, text):
    group = add_group(sub, name, text)
    for stage, settings in SETTINGS.items():
        add_command(group, stage, HELP[stage], DESCRIPTIONS[stage] + " Writes OUT (JSONL rows with provenance), the "
                    "stats beside it (NAME.stats.json) and the settings (NAME.config.toml).", run, settings)


def run(args):
    root = resolve(args)
    section = args.settings.sections[0]
    cfg = getattr(root, section)
    if args.sub == "mine":
        from codelm.synth.mine import mine

        summary = mine(cfg).summary(cfg.out)
    elif args.sub == "oss-instruct":
        from codelm.synth.oss_instruct import oss_instruct

        summary = oss_instruct(cfg).summary("oss-instruct", cfg.out)
    else:
        from codelm.synth.magpie import magpie

        summary = magpie(cfg).summary("magpie", cfg.out)
    write_config(root, args.settings, Path(cfg.out).with_suffix(".config.toml"))
    print(summary)
