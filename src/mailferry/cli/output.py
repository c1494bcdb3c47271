"""How commands talk to the operator: Postfix-style `program: severity: text` on stderr."""

from __future__ import annotations

import sys

ERROR = "error"  # mailferry.diagnostics.ERROR, without importing dataclasses on start-up
MISSING_FILE = "missing-file"  # mailferry.diagnostics.MISSING_FILE


class Reporter:
    def __init__(self, program: str, verbose: int = 0):
        self.program = program
        self.verbose = verbose
        self.errors = 0
        self.warnings = 0
        self.missing_files = 0  # errors whose cause is a file not on this machine, counted apart

    def diagnostic(self, item) -> None:  # a mailferry.diagnostics.Diagnostic
        if getattr(item, "kind", "") == MISSING_FILE:
            self.missing_files += 1
        elif item.severity == ERROR:
            self.errors += 1
        else:
            self.warnings += 1
        print(item.format(self.program), file=sys.stderr)

    def warning(self, text: str) -> None:
        self.warnings += 1
        print(f"{self.program}: warning: {text}", file=sys.stderr)

    def error(self, text: str) -> None:
        self.errors += 1
        print(f"{self.program}: error: {text}", file=sys.stderr)

    def fatal(self, text: str) -> int:
        print(f"{self.program}: fatal: {text}", file=sys.stderr)
        return 2

    def info(self, text: str) -> None:
        print(f"{self.program}: {text}", file=sys.stderr)
