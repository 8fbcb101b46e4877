"""Which language a file is in: by file name, extension, then shebang.

Languages are also classed as data formats or markup, because the quality
filters treat those differently (StarCoder2 exempts them from line-length
limits and caps data files by size and line count instead).
"""

import re

EXTENSIONS = {
    ".py": "Python", ".pyi": "Python", ".pyw": "Python", ".c": "C", ".h": "C", ".cc": "C++", ".cpp": "C++",
    ".cxx": "C++", ".hpp": "C++", ".hh": "C++", ".hxx": "C++", ".cs": "C#", ".java": "Java", ".kt": "Kotlin",
    ".kts": "Kotlin", ".scala": "Scala", ".go": "Go", ".rs": "Rust", ".js": "JavaScript", ".mjs": "JavaScript",
    ".cjs": "JavaScript", ".jsx": "JavaScript", ".ts": "TypeScript", ".tsx": "TypeScript", ".rb": "Ruby",
    ".php": "PHP", ".swift": "Swift", ".m": "Objective-C", ".mm": "Objective-C", ".sh": "Shell", ".bash": "Shell",
    ".zsh": "Shell", ".lua": "Lua", ".pl": "Perl", ".pm": "Perl", ".r": "R", ".jl": "Julia", ".hs": "Haskell",
    ".ml": "OCaml", ".mli": "OCaml", ".ex": "Elixir", ".exs": "Elixir", ".erl": "Erlang", ".clj": "Clojure",
    ".dart": "Dart", ".sql": "SQL", ".f90": "Fortran", ".f": "Fortran", ".zig": "Zig", ".nim": "Nim",
    ".vim": "Vim script", ".ps1": "PowerShell", ".cmake": "CMake", ".fs": "F#", ".groovy": "Groovy",
    ".vue": "Vue", ".svelte": "Svelte", ".sol": "Solidity", ".proto": "Protocol Buffer", ".asm": "Assembly",
    ".s": "Assembly", ".cu": "CUDA", ".html": "HTML", ".htm": "HTML", ".css": "CSS", ".scss": "SCSS",
    ".md": "Markdown", ".rst": "reStructuredText", ".tex": "TeX", ".xml": "XML", ".json": "JSON",
    ".yaml": "YAML", ".yml": "YAML", ".toml": "TOML", ".csv": "CSV", ".tsv": "TSV", ".ini": "INI",
}
FILENAMES = {
    "Makefile": "Makefile", "GNUmakefile": "Makefile", "Dockerfile": "Dockerfile", "CMakeLists.txt": "CMake",
    "Rakefile": "Ruby", "Gemfile": "Ruby", "BUILD": "Starlark", "WORKSPACE": "Starlark",
}
# Interpreter named on a '#!' line -> language.
SHEBANGS = {
    "python": "Python", "python3": "Python", "python2": "Python", "sh": "Shell", "bash": "Shell", "zsh": "Shell",
    "dash": "Shell", "ksh": "Shell", "perl": "Perl", "ruby": "Ruby", "node": "JavaScript", "nodejs": "JavaScript",
    "php": "PHP", "lua": "Lua", "Rscript": "R", "julia": "Julia", "tclsh": "Tcl", "deno": "TypeScript",
}
DATA_FORMATS = {"JSON", "YAML", "TOML", "CSV", "TSV", "INI", "XML"}
MARKUP = {"HTML", "Markdown", "reStructuredText", "TeX", "XML", "CSS", "SCSS"}

_SHEBANG = re.compile(r"#!\s*(\S+)(?:\s+(\S+))?")


def language_of(path: str, first_line: str = "") -> str:
    """The language of a file, or "" when neither its name nor its shebang says."""
    name = path.rsplit("/", 1)[-1]
    if name in FILENAMES:
        return FILENAMES[name]
    dot = name.rfind(".")
    if dot > 0 and (lang := EXTENSIONS.get(name[dot:].lower())):
        return lang
    return language_of_shebang(first_line)


def language_of_shebang(first_line: str) -> str:
    match = _SHEBANG.match(first_line)
    if not match:
        return ""
    program, arg = match.groups()
    program = program.rsplit("/", 1)[-1]
    if program == "env" and arg:  # '#!/usr/bin/env python3'
        program = arg
    program = re.sub(r"[\d.]+$", "", program) or program  # python3.11 -> python
    return SHEBANGS.get(program, SHEBANGS.get(program + "3", ""))


def is_data_or_markup(lang: str) -> bool:
    return lang in DATA_FORMATS or lang in MARKUP
