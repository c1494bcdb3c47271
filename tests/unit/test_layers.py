"""The import graph between mailferry's packages runs one way (docs/flow.md, "Layers").

Every import statement counts, the ones inside functions included: a lazy
import hides an arrow from the reader, not from this test. A package may
import packages of its own layer or of layers below it, never above, and the
graph between packages has no loop, within a layer either.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import mailferry

SOURCE = Path(mailferry.__file__).resolve().parent

# Bottom first. A top-level module (message.py) is a "package" of its own here.
LAYERS: tuple[frozenset[str], ...] = tuple(frozenset(layer) for layer in (
    # the shared vocabulary: the SMTP/LMTP state machines, Postfix's text syntax,
    # the message dataclasses, the log, diagnostics, the control socket's wire format
    {"mailferry", "protocol", "syntax", "message", "maillog", "diagnostics", "control", "tlsinfo", "tlsparams",
     "metrics"},                    # Prometheus metrics: hooks called by every layer above
    {"tables"},                     # lookup tables, by type (dict_*)
    {"config"},                     # main.cf, master.cf, the parameter table, check
    {"anvil"},                      # client limits: counts and rates shared by the smtpd processes
    {"queue"},                      # storage only
    {"routing", "refusals", "content"},   # trivial-rewrite; receiving-side failures into replies; MIME, header/body checks
    {"auth", "milter"},             # SMTP AUTH, server side (xsasl); the milter client
    {"delivery"},                   # delivery agents and the defer-or-bounce decision
    {"cleanup", "qmgr"},            # the way into the queue, and the queue manager
    {"policy"},                     # the restriction engine (smtpd_check), below smtpd which runs it
    {"smtpd", "local"},             # receiving services
    {"master"},                     # the daemon's life
    {"cli", "__main__"},            # the commands
))
RANK = {package: rank for rank, layer in enumerate(LAYERS) for package in layer}


def package_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def module_name(path: Path) -> str:
    parts = ("mailferry", *path.relative_to(SOURCE).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every mailferry module a file imports, relative imports resolved."""
    module = module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                found.add(".".join(base + ([node.module] if node.module else [])))
            else:
                found.add(node.module)
    return {name for name in found if name == "mailferry" or name.startswith("mailferry.")}


def package_graph() -> dict[str, dict[str, list[str]]]:
    """package -> imported package -> the modules that import it."""
    graph: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for path in sorted(SOURCE.rglob("*.py")):
        source = module_name(path)
        for target in imports_of(path):
            if package_of(target) != package_of(source):
                graph[package_of(source)][package_of(target)].append(source)
    return graph


def find_loop(graph: dict[str, dict[str, list[str]]]) -> list[str] | None:
    state: dict[str, str] = {}
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        path.append(node)
        for target in graph.get(node, {}):
            if state.get(target) == "open":
                return path[path.index(target):] + [target]
            if target not in state and (loop := visit(target)):
                return loop
        path.pop()
        state[node] = "done"
        return None

    for node in list(graph):
        if node not in state and (loop := visit(node)):
            return loop
    return None


def test_every_package_has_a_layer():
    packages = {package_of(module_name(path)) for path in SOURCE.rglob("*.py")}
    assert not packages - RANK.keys(), "add the new package to LAYERS, where its imports put it"


def test_imports_point_down_the_layers():
    upward = [f"{source} imports {target} (from {', '.join(sorted(set(modules)))})"
              for source, targets in package_graph().items()
              for target, modules in targets.items()
              if RANK.get(target, -1) > RANK.get(source, -1)]
    assert not upward, "\n".join(upward)


def test_packages_import_each_other_in_no_loop():
    assert find_loop(package_graph()) is None


def test_the_storage_layer_imports_only_the_message_records():
    assert set(package_graph().get("queue", {})) <= {"message"}


def test_the_shared_syntax_imports_nothing_from_mailferry():
    assert imports_of(SOURCE / "syntax.py") == set()


def test_tables_import_nothing_from_config():
    """config/ opens tables (check, local domains); the other way round would make a loop."""
    assert "config" not in package_graph().get("tables", {})


def test_an_import_inside_a_function_is_seen(tmp_path, monkeypatch):
    module = tmp_path / "bad.py"
    module.write_text("def f():\n    from mailferry.delivery import outcome\n")
    monkeypatch.setattr(f"{__name__}.SOURCE", tmp_path)
    assert imports_of(module) == {"mailferry.delivery"}


def test_a_loop_and_an_upward_import_are_caught():
    """The checks themselves can fail: a made-up graph with a loop is reported."""
    graph = {"config": {"tables": ["x"]}, "tables": {"config": ["y"]}}
    assert find_loop(graph) in (["config", "tables", "config"], ["tables", "config", "tables"])
    assert RANK["tables"] < RANK["config"] < RANK["queue"] < RANK["qmgr"] < RANK["master"]
