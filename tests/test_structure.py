"""The source's shape: no import cycle among tamperaudit's modules, and no untyped dictionary
handed between the modules that pass samples, metrics, the manifest and the report around."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import tamperaudit

SOURCE = Path(tamperaudit.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(SOURCE).with_suffix("").parts
    return ".".join(("tamperaudit", *parts)).removesuffix(".__init__")


def import_graph() -> dict[str, set[str]]:
    """Each module's imports of other tamperaudit modules, function-level imports included."""
    modules = {_module_name(path): path for path in SOURCE.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*parts, *([node.module] if node.module else [])])
                targets = [f"{base}.{alias.name}" for alias in node.names]
                graph[name] |= {t if t in modules else base for t in targets}
            elif isinstance(node, ast.Import):
                graph[name] |= {alias.name for alias in node.names}
        graph[name] = {target for target in graph[name] if target in modules and target != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_module_of_tamperaudit_imports_itself_back():
    graph = import_graph()
    assert "tamperaudit.evals.verdicts" in graph and "tamperaudit.report.words" in graph
    assert cycles(graph) == []


# The modules that hand samples, stage metrics, the manifest and the report to each other.
TYPED = [
    "tamperaudit.records", "tamperaudit.runfolder", "tamperaudit.score", "tamperaudit.stats", "tamperaudit.pipeline",
    "tamperaudit.evals.refusal", "tamperaudit.evals.capability", "tamperaudit.evals.lm_harness",
    "tamperaudit.report.build", "tamperaudit.report.render", "tamperaudit.report.verdict", "tamperaudit.report.plots",
    "tamperaudit.report.compare", "tamperaudit.report.words", "tamperaudit.backends", "tamperaudit.backends.hf",
    "tamperaudit.backends.vllm", "tamperaudit.cost", "tamperaudit.cli",
]


def _public_signatures(module_name: str) -> list[tuple[str, str]]:
    import importlib

    module = importlib.import_module(module_name)
    found = []
    for name, value in vars(module).items():
        if name.startswith("_") or getattr(value, "__module__", None) != module_name:
            continue
        members = [(name, value)]
        if inspect.isclass(value):
            members += [(f"{name}.{n}", v) for n, v in vars(value).items() if callable(v) and not n.startswith("_")]
        for label, member in members:
            if callable(member) and not inspect.isclass(member):
                found.append((f"{module_name}.{label}", " ".join(str(a) for a in member.__annotations__.values())))
    return found


def test_no_untyped_dictionary_crosses_between_the_modules_that_pass_records():
    untyped = [name for module in TYPED for name, annotations in _public_signatures(module)
               if "dict[str, Any]" in annotations or "dict[str, typing.Any]" in annotations]
    assert untyped == []
