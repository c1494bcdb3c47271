"""Problems found in configuration files and tables, as operators read them.

Every diagnostic names the file and line (when there is one), the parameter
involved, and what to do. The CLI prints them; `check` counts the errors.
"""

from __future__ import annotations

from dataclasses import dataclass

ERROR = "error"
WARNING = "warning"


@dataclass(frozen=True, slots=True)
class Diagnostic:
    severity: str  # ERROR or WARNING
    message: str
    file: str | None = None
    line: int | None = None
    parameter: str | None = None

    @property
    def location(self) -> str:
        if self.file and self.line:
            return f"{self.file}, line {self.line}"
        return self.file or ""

    def format(self, program: str = "mailferry") -> str:
        where = f"{self.location}: " if self.location else ""
        return f"{program}: {self.severity}: {where}{self.message}"


def error(message: str, file: str | None = None, line: int | None = None,
          parameter: str | None = None) -> Diagnostic:
    return Diagnostic(ERROR, message, file, line, parameter)


def warning(message: str, file: str | None = None, line: int | None = None,
            parameter: str | None = None) -> Diagnostic:
    return Diagnostic(WARNING, message, file, line, parameter)
