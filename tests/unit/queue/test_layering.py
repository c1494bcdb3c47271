"""queue/ is storage only: it sits below every service, so it imports none of them
(the queue manager, delivery, routing, cleanup, smtpd, pickup, master, cli...)."""

import ast
from pathlib import Path

import mailferry.queue

QUEUE_PACKAGE = Path(mailferry.queue.__file__).parent
ALLOWED = ("mailferry.queue", "mailferry.message")


def mailferry_imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return {name for name in found if name == "mailferry" or name.startswith("mailferry.")}


def test_the_queue_package_imports_only_itself_and_the_message_records():
    modules = sorted(QUEUE_PACKAGE.glob("*.py"))
    assert modules, QUEUE_PACKAGE
    offending = {path.name: sorted(name for name in mailferry_imports(path)
                                   if not any(name == allowed or name.startswith(allowed + ".")
                                              for allowed in ALLOWED))
                 for path in modules}
    assert {name: imports for name, imports in offending.items() if imports} == {}


def test_the_check_sees_an_upward_import(tmp_path):
    module = tmp_path / "bad.py"
    module.write_text("def f():\n    from mailferry.delivery import outcome\n")
    assert mailferry_imports(module) == {"mailferry.delivery"}
