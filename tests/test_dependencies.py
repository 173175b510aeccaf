"""The house rules, read from the source with ``ast``: dependencies flow one way, and nothing cites a file that is
not in the repository.

- ``distill`` may import ``bench``; the demo world (``bench/demo``) may import both; bench's core (every other
  module under ``bench/``) imports neither, at module level or inside a function.
- No import cycle between the project's modules.
- No citation of the team's working notes, which live beside the repository and which its readers do not have
  (``OUTSIDE`` below is their path pattern); every ``docs/*.md`` that is cited exists.
"""

import ast
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("bench", "distill")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules() -> dict[str, Path]:
    return {module_name(path): path for package in PACKAGES for path in (ROOT / package).rglob("*.py")}


def imports_of(path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules ``path`` imports anywhere in its body (``from a import b`` counts ``a.b`` when it is a
    module, else ``a``)."""
    found = set()
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base
                                                                                                  else []))
            names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        else:
            continue
        found |= {name for name in names if name in modules}
    return found


def graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {name: imports_of(path, modules) - {name} for name, path in modules.items()}


def is_core(name: str) -> bool:
    return name.startswith("bench") and not name.startswith("bench.demo")


def test_bench_core_imports_neither_distill_nor_the_demo():
    offending = {name: sorted(target for target in targets if target.startswith(("distill", "bench.demo")))
                 for name, targets in graph().items() if is_core(name)}
    assert not {k: v for k, v in offending.items() if v}


def test_distill_does_not_import_the_demo():
    offending = {name: sorted(t for t in targets if t.startswith("bench.demo"))
                 for name, targets in graph().items() if name.startswith("distill")}
    assert not {k: v for k, v in offending.items() if v}


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for target in sorted(edges.get(node, ())):
            if state.get(target) == "open":
                return stack[stack.index(target):] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(edges):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_cycles():
    assert find_cycle(graph()) is None, " -> ".join(find_cycle(graph()))


def test_the_cycle_finder_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def tracked_text_files() -> list[Path]:
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout.split()
    suffixes = {".py", ".md", ".sh", ".toml", ".txt", ".cfg", ".yaml", ".yml", ""}
    return [ROOT / name for name in listed if Path(name).suffix in suffixes and (ROOT / name).is_file()
            and not name.startswith("tests/fixtures/")]


OUTSIDE = re.compile(r"(?<![\w./-])((?:\.\./)+(?:shared|reference)[\w./-]*|shared/[\w./-]+|reference/[\w-]+\.md)")


def test_nothing_cites_files_outside_the_repository():
    found = {str(path.relative_to(ROOT)): OUTSIDE.findall(path.read_text(errors="replace"))
             for path in tracked_text_files()}
    assert not {k: v for k, v in found.items() if v}


def test_cited_docs_exist():
    this = Path(__file__).resolve()
    cited = {match for path in tracked_text_files() if path != this
             for match in re.findall(r"(?<![\w/])docs/[\w-]+\.md", path.read_text(errors="replace"))}
    assert cited and not sorted(c for c in cited if not (ROOT / c).is_file())


def test_the_citation_pattern_catches_outside_notes():
    # Joined from parts, so that this file, which the test above reads too, cites nothing itself.
    outside = ["/".join(("reference", "paper.md")), "/".join(("..", "shared", "x.md")),
               "/".join(("shared", "reference", "h100.md"))]
    text = (f"see ``{outside[0]}`` and {outside[1]}, {outside[2]}; "
            "not docs/reference.md nor ../results/run/manifest.json")
    assert OUTSIDE.findall(text) == outside
