"""The daemon imports everything it will run before it gives up root.

After the privilege drop the interpreter's own library may be unreadable (a
Python under /root, as pyenv installs it), so an import that happens late,
inside a function deep in a session, would fail there. The master therefore
imports every daemon module first (master/server.py). This test reads every
import statement of those modules, the ones inside functions included, and
checks that a fresh interpreter has loaded each of them after that step.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

from mailferry.master.server import daemon_modules

_LOADED_AFTER_PRELOAD = """
import json, sys
from mailferry.master import server
server._import_everything_the_services_use()
print(json.dumps(sorted(sys.modules)))
"""


def imported_names(source: str) -> set[str]:
    """Modules an import statement names, wherever it stands, except under `if TYPE_CHECKING:`."""
    tree = ast.parse(source)
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(child) for statement in node.body for child in ast.walk(statement))
    names: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module != "__future__":
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _is_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def test_imports_inside_functions_are_seen():
    source = "import os\ndef late():\n    from email import policy\n    import difflib\n"
    assert imported_names(source) == {"os", "email", "email.policy", "difflib"}


def test_type_checking_imports_are_not_required():
    source = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import difflib\n"
    assert imported_names(source) == {"typing", "typing.TYPE_CHECKING"}


def test_the_command_line_is_not_preloaded_but_every_service_is():
    modules = daemon_modules()
    assert not [name for name in modules if name.startswith("mailferry.cli")]
    for package in ("smtpd", "cleanup", "queue", "delivery", "routing", "tables", "config", "local"):
        assert any(name.startswith(f"mailferry.{package}.") for name in modules), package


def test_every_module_a_daemon_module_imports_is_loaded_before_the_privilege_drop():
    output = subprocess.run([sys.executable, "-c", _LOADED_AFTER_PRELOAD], check=True,
                            capture_output=True, text=True).stdout
    loaded = set(json.loads(output))
    missing = {}
    for name in daemon_modules():
        spec = importlib.util.find_spec(name)
        for imported in imported_names(Path(spec.origin).read_text()):
            # `from package import name` names a module only when it is one; optional
            # dependencies that are not installed (uvloop) cannot be loaded at all.
            if imported not in loaded and _is_module(imported):
                missing.setdefault(imported, []).append(name)
    assert not missing, f"imported late, after root is given up: {missing}"
