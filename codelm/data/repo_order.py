"""Repository-level documents (DeepSeek-Coder): files ordered so dependencies come first.

Per repository: extract import edges, resolve them to files of the same
repository, order files by repeatedly taking the file with the fewest
not-yet-placed dependencies (ties by path, so a cycle costs one broken edge
instead of an error; see dependency_order), and emit each connected group of files as one document:

    <repo_name>owner/repo<file_sep>a/util.py\\n...<file_sep>a/main.py\\n...

The marker strings are special tokens. Their character spans are kept in the
document's `specials` metadata, so tokenization encodes exactly those spans as
special tokens and any look-alike text inside a file as plain text.
"""

import heapq
import json
import posixpath
import re
from collections import defaultdict

from datatrove.data import Document
from datatrove.pipeline.base import PipelineStep

from codelm.data.dedup import UnionFind
from codelm.data.sources import document
from codelm.tokenizer import FILE_SEP, REPO_NAME

IMPORTS = {
    "Python": [re.compile(r"^[ \t]*import[ \t]+([\w.]+(?:[ \t]*,[ \t]*[\w.]+)*)", re.M),
               re.compile(r"^[ \t]*from[ \t]+(\.*[\w.]*)[ \t]+import[ \t]+\(?[ \t]*([\w, \t]+)", re.M)],
    "C": [re.compile(r'^[ \t]*#[ \t]*include[ \t]*[<"]([^>"]+)[>"]', re.M)],
    "Java": [re.compile(r"^[ \t]*import[ \t]+(?:static[ \t]+)?([\w.]+)", re.M)],
    "Kotlin": [re.compile(r"^[ \t]*import[ \t]+([\w.]+)", re.M)],
    "C#": [re.compile(r"^[ \t]*using[ \t]+(?:static[ \t]+)?([\w.]+)[ \t]*;", re.M)],
    "Go": [re.compile(r'^[ \t]*import[ \t]+(?:\w+[ \t]+)?"([^"]+)"', re.M),
           re.compile(r'^[ \t]*(?:\w+[ \t]+)?"([^"]+)"[ \t]*$', re.M)],  # lines inside import ( ... )
    "JavaScript": [re.compile(r"""(?:import|export)\b[^'";]*?\bfrom[ \t]*['"]([^'"]+)['"]"""),
                   re.compile(r"""\brequire\(\s*['"]([^'"]+)['"]\s*\)"""),
                   re.compile(r"""^[ \t]*import[ \t]*['"]([^'"]+)['"]""", re.M)],
}
IMPORTS["C++"] = IMPORTS["Objective-C"] = IMPORTS["CUDA"] = IMPORTS["C"]
IMPORTS["TypeScript"] = IMPORTS["JavaScript"]
JS_SUFFIXES = ["", ".js", ".ts", ".jsx", ".tsx", ".mjs", "/index.js", "/index.ts"]


def import_targets(text: str, lang: str, path: str) -> list[str]:
    """Candidate path suffixes (or './'-relative paths) that the file's imports may refer to."""
    targets = []
    directory = posixpath.dirname(path)
    for pattern in IMPORTS.get(lang, []):
        for match in pattern.finditer(text):
            if lang == "Python":
                targets += _python_targets(match, directory)
            elif lang in ("Java", "Kotlin", "C#"):
                module = match.group(1).replace(".", "/")
                targets += [module + ext for ext in (".java", ".kt", ".cs")] + [module + "/"]
            elif lang in ("JavaScript", "TypeScript"):
                spec = match.group(1)
                if spec.startswith("."):
                    base = posixpath.normpath(posixpath.join(directory, spec))
                    targets += ["./" + base + ext for ext in JS_SUFFIXES]
                else:
                    targets += [spec + ext for ext in JS_SUFFIXES[1:]]
            elif lang == "Go":
                targets.append(match.group(1).rstrip("/") + "/")
            else:  # C-family includes: relative to the file, else anywhere in the repo
                spec = match.group(1)
                targets += ["./" + posixpath.normpath(posixpath.join(directory, spec)), spec]
    return targets


def _python_targets(match: re.Match, directory: str) -> list[str]:
    if match.re is IMPORTS["Python"][0]:  # import a.b, c
        modules = [m.strip() for m in match.group(1).split(",")]
        return [t for m in modules for t in (m.replace(".", "/") + ".py", m.replace(".", "/") + "/__init__.py")]
    module, names = match.group(1), [n.strip() for n in match.group(2).split(",") if n.strip()]
    dots = len(module) - len(module.lstrip("."))
    body = module[dots:].replace(".", "/")
    if dots:  # relative import: resolved against the package directory
        base = directory
        for _ in range(dots - 1):
            base = posixpath.dirname(base)
        prefix = "./" + posixpath.join(base, body) if body else "./" + base
    else:
        prefix = body
    targets = [prefix + ".py", prefix + "/__init__.py"]
    targets += [posixpath.join(prefix, name) + ".py" for name in names]  # from pkg import module
    return targets


def dependency_edges(files: dict[str, tuple[str, str]]) -> dict[str, set[str]]:
    """path -> the set of repository files it depends on; files maps path -> (text, lang)."""
    by_suffix: dict[str, list[str]] = defaultdict(list)  # "b/c.py" -> files ending in it
    by_dir_suffix: dict[str, list[str]] = defaultdict(list)  # "pkg/" -> files directly in a dir ending in it
    for path in files:
        parts = path.split("/")
        for i in range(len(parts)):
            by_suffix["/".join(parts[i:])].append(path)
            if i < len(parts) - 1:
                by_dir_suffix["/".join(parts[i:-1]) + "/"].append(path)
    deps: dict[str, set[str]] = {}
    for path, (text, lang) in files.items():
        found: set[str] = set()
        for target in import_targets(text, lang, path):
            if target.startswith("./"):
                exact = target[2:]
                found.update([exact] if exact in files else [])
            elif target.endswith("/"):
                found.update(by_dir_suffix.get(target, []))
            else:
                found.update(by_suffix.get(target, []))
        found.discard(path)
        deps[path] = found
    return deps


def dependency_order(deps: dict[str, set[str]]) -> list[str]:
    """All files, dependencies first; ties by path. Cycles are fine.

    Files with no unplaced dependency go first (Kahn). When only cycles are left, the next file is the one
    with the fewest unplaced dependencies (DeepSeek-Coder's rule) among those whose unplaced dependencies
    all lie on a cycle through it, so a file that merely imports a cycle still waits for the whole cycle.
    """
    remaining = {p: len(d) for p, d in deps.items()}
    dependents: dict[str, list[str]] = defaultdict(list)
    for path, ds in deps.items():
        for d in ds:
            dependents[d].append(path)
    ready = [p for p, n in remaining.items() if n == 0]
    heapq.heapify(ready)
    order, placed = [], set()

    def reaches(start: str, target: str) -> bool:
        seen, stack = {start}, [start]
        while stack:
            for d in deps[stack.pop()]:
                if d == target:
                    return True
                if d not in placed and d not in seen:
                    seen.add(d)
                    stack.append(d)
        return False

    while len(order) < len(deps):
        if not ready:  # only cycles (and what depends on them) are left
            candidates = sorted((remaining[p], p) for p in deps if p not in placed)
            path = next(p for _, p in candidates
                        if all(reaches(d, p) for d in deps[p] if d not in placed))
        else:
            path = heapq.heappop(ready)
            if path in placed:
                continue
        placed.add(path)
        order.append(path)
        for dependent in dependents[path]:
            if dependent not in placed:
                remaining[dependent] -= 1
                if remaining[dependent] == 0:
                    heapq.heappush(ready, dependent)
    return order


def connected_groups(deps: dict[str, set[str]], order: list[str]) -> list[list[str]]:
    """Files linked by imports in either direction, each group in `order`'s order; groups by first file."""
    uf = UnionFind()
    for path, ds in deps.items():
        for d in ds:
            uf.union(path, d)
    groups: dict[str, list[str]] = {}
    for path in order:
        groups.setdefault(uf.find(path), []).append(path)
    return list(groups.values())


def repo_document(repo: str, paths: list[str], docs: dict[str, Document]) -> Document:
    pieces, specials, offset = [], [], 0

    def add(text: str, special: bool = False):
        nonlocal offset
        if special:
            specials.append([offset, offset + len(text)])
        pieces.append(text)
        offset += len(text)

    add(REPO_NAME, special=True)
    add(repo)
    for path in paths:
        add(FILE_SEP, special=True)
        add(f"{path}\n{docs[path].text}")
    first = docs[paths[0]].metadata
    doc = document("".join(pieces), repo, paths[0] if len(paths) == 1 else f"{paths[0]} (+{len(paths) - 1})",
                   "mixed" if len({docs[p].metadata["lang"] for p in paths}) > 1 else first["lang"],
                   first["source"], stars=max(int(docs[p].metadata["stars"]) for p in paths),
                   license=first["license"])
    doc.metadata["specials"] = json.dumps(specials)
    doc.metadata["files"] = len(paths)
    return doc


class RepoDocuments(PipelineStep):
    """Collects this task's files (a task holds whole repositories), then yields one document per group."""

    type = "📚 - REPO"
    name = "🗂 repository documents"

    def run(self, data, rank: int = 0, world_size: int = 1):
        repos: dict[str, dict[str, Document]] = defaultdict(dict)
        for doc in data:
            repos[doc.metadata["repo"]][doc.metadata["path"]] = doc
        for repo in sorted(repos):
            docs = repos[repo]
            with self.track_time():
                deps = dependency_edges({p: (d.text, d.metadata["lang"]) for p, d in docs.items()})
                groups = connected_groups(deps, dependency_order(deps))
                self.stat_update("repos")
                self.stat_update("import_edges", value=sum(map(len, deps.values())))
            for paths in groups:
                self.stat_update("repo_documents")
                yield repo_document(repo, paths, docs)
