"""The package's layers: a module imports only from its own layer or the ones below it, at module top,
and no package imports one that imports it back.

Read lowest first. core: configs, errors, atomic files, tokenizer, chat templates, precision probes.
model: the network. checkpoint: weights on disk (LoRA adapters in PEFT's format). interop: the HF and
GGUF formats, in and out. sandbox: untrusted code. tasks: benchmark items checked through the sandbox.
data: curation, shards, loaders. inference: the engine. synth: instruction data mined from code or
written by a teacher model. train: the one loop and its recipes. scaling: FLOPs accounting, IsoFLOP
sweeps (trained with train) and their fits. eval: what a checkpoint is worth. serve: the HTTP API.
entry: the CLI, the speedrun and the report, which may use everything.
"""

import ast
from pathlib import Path

import codelm

LAYERS = [
    ("core", ["codelm.config", "codelm.errors", "codelm.io", "codelm.tokenizer", "codelm.chat", "codelm.precision"]),
    ("model", ["codelm.model"]),
    ("checkpoint", ["codelm.checkpoint"]),
    ("interop", ["codelm.interop"]),
    ("sandbox", ["codelm.sandbox"]),
    ("tasks", ["codelm.tasks"]),
    ("data", ["codelm.data"]),
    ("inference", ["codelm.inference"]),
    ("synth", ["codelm.synth"]),
    ("train", ["codelm.train"]),
    ("scaling", ["codelm.scaling"]),
    ("eval", ["codelm.eval"]),
    ("serve", ["codelm.serve"]),
    ("entry", ["codelm.cli", "codelm.speedrun", "codelm.report", "codelm.__main__", "codelm"]),
]
PACKAGE = Path(codelm.__file__).parent
# Entry points import stages inside their commands: importing them all costs seconds a `--help` should not pay.
INNER_IMPORTS_ALLOWED = {"codelm.cli"}  # the package: every command module


def layer_of(module: str) -> int:
    """Index in LAYERS of the longest prefix naming the module."""
    best = max(
        (
            prefix
            for _, prefixes in LAYERS
            for prefix in prefixes
            if module == prefix or module.startswith(prefix + ".")
        ),
        key=len,
        default=None,
    )
    assert best is not None, f"{module} is in no layer: add it to LAYERS"
    return next(i for i, (_, prefixes) in enumerate(LAYERS) if best in prefixes)


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def codelm_imports(source: str, module: str, is_package: bool = False):
    """(imported module, line, at module top?) for every import of codelm in a module's source."""
    tree = ast.parse(source)
    top = {id(node) for node in tree.body}
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            names = [f"{base}.{a.name}" if is_module(f"{base}.{a.name}") else base for a in node.names]
        else:
            continue
        for name in names:
            if name == "codelm" or name.startswith("codelm."):
                yield name, node.lineno, id(node) in top


def is_module(name: str) -> bool:
    """`from codelm import checkpoint` imports a module, `from codelm.config import Config` a name."""
    path = PACKAGE.parent.joinpath(*name.split("."))
    return path.is_dir() or path.with_suffix(".py").is_file()


def upward_imports(source: str, module: str, is_package: bool = False) -> list[str]:
    return [
        f"line {line}: {module} ({LAYERS[layer_of(module)][0]}) imports {imported} ({LAYERS[layer_of(imported)][0]})"
        for imported, line, _ in codelm_imports(source, module, is_package)
        if layer_of(imported) > layer_of(module)
    ]


def modules() -> list[tuple[Path, str]]:
    return [(path, module_name(path)) for path in sorted(PACKAGE.rglob("*.py"))]


def test_every_module_has_a_layer():
    for _, module in modules():
        layer_of(module)


def test_imports_go_down_the_layers_only():
    violations = [
        f"{path.relative_to(PACKAGE.parent)} {v}"
        for path, module in modules()
        for v in upward_imports(path.read_text(), module, path.name == "__init__.py")
    ]
    assert not violations, "\n".join(violations)


def test_imports_sit_at_module_top():
    inner = [
        f"{path.relative_to(PACKAGE.parent)}:{line}: {imported}"
        for path, module in modules()
        if package_of(module) not in INNER_IMPORTS_ALLOWED
        for imported, line, top in codelm_imports(path.read_text(), module, path.name == "__init__.py")
        if not top
    ]
    assert not inner, "\n".join(inner)


def package_of(module: str) -> str:
    """codelm.train.loop -> codelm.train; a top-level module (codelm.config) is its own package."""
    return ".".join(module.split(".")[:2])


def test_no_cycle_between_packages():
    edges: dict[str, set[str]] = {}
    for path, module in modules():
        for imported, _, _ in codelm_imports(path.read_text(), module, path.name == "__init__.py"):
            if package_of(imported) not in (package_of(module), "codelm"):
                edges.setdefault(package_of(module), set()).add(package_of(imported))

    def cycle_from(node: str, path: list[str]) -> list[str] | None:
        if node in path:
            return path[path.index(node) :] + [node]
        for nxt in sorted(edges.get(node, ())):
            found = cycle_from(nxt, path + [node])
            if found:
                return found
        return None

    cycles = [" -> ".join(c) for c in (cycle_from(n, []) for n in sorted(edges)) if c]
    assert not cycles, cycles[0]


def test_the_walk_finds_upward_and_relative_imports():
    source = "from codelm.config import Config\nfrom ..train import loop\n\ndef f():\n    from codelm import report\n"
    found = upward_imports(source, "codelm.model.llama")
    assert [v.split(":")[0] for v in found] == ["line 2", "line 5"], found
    assert "imports codelm.train.loop (train)" in found[0] and "imports codelm.report (entry)" in found[1]
    assert [top for *_, top in codelm_imports(source, "codelm.model.llama")] == [True, True, False]
