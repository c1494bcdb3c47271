"""`check` for mailferry_metrics_listen (docs/metrics.md): what the start would refuse."""

from __future__ import annotations

from mailferry.config.config import Config
from mailferry.diagnostics import Diagnostic, error
from mailferry.metrics.address import MetricsAddressError, parse_listen


def check_metrics_listen(config: Config) -> list[Diagnostic]:
    try:
        value = config.get("mailferry_metrics_listen")
        allow_remote = config.boolean("mailferry_metrics_allow_remote")
    except ValueError:
        return []       # a bad boolean is lint's to report
    try:
        parse_listen(value, allow_remote)
    except MetricsAddressError as problem:
        setting = config.settings.get("mailferry_metrics_listen")
        return [error(str(problem), setting.file if setting else None, setting.line if setting else None,
                      "mailferry_metrics_listen")]
    return []
