"""Problems found in configuration files and tables, as operators read them.

Every diagnostic names the file and line (when there is one), the parameter
involved, and what to do. The CLI prints them; `check` counts the errors.
"""

from __future__ import annotations

from dataclasses import dataclass

ERROR = "error"
WARNING = "warning"
# A kind of error: a file the configuration names is not on this machine. Postfix would fail
# on it too; `check` lists these apart from the rest, so a configuration copied from another
# host (or a container image that writes its tables at start) reads clearly.
MISSING_FILE = "missing-file"


@dataclass(frozen=True, slots=True)
class Diagnostic:
    severity: str  # ERROR or WARNING
    message: str
    file: str | None = None
    line: int | None = None
    parameter: str | None = None
    kind: str = ""  # "" or MISSING_FILE

    @property
    def location(self) -> str:
        if self.file and self.line:
            return f"{self.file}, line {self.line}"
        return self.file or ""

    def format(self, program: str = "mailferry") -> str:
        where = f"{self.location}: " if self.location else ""
        label = "missing file" if self.kind == MISSING_FILE else self.severity
        return f"{program}: {label}: {where}{self.message}"


def error(message: str, file: str | None = None, line: int | None = None,
          parameter: str | None = None) -> Diagnostic:
    return Diagnostic(ERROR, message, file, line, parameter)


def warning(message: str, file: str | None = None, line: int | None = None,
            parameter: str | None = None) -> Diagnostic:
    return Diagnostic(WARNING, message, file, line, parameter)


def missing_file(message: str, file: str | None = None, line: int | None = None,
                 parameter: str | None = None) -> Diagnostic:
    """An error whose cause is a file that does not exist here (see MISSING_FILE)."""
    return Diagnostic(ERROR, message, file, line, parameter, MISSING_FILE)
