"""`mailferry postconf`: show parameters and services, as Postfix's postconf.

  postconf [-d | -n] [-h] [-x] [NAME...]   parameters, sorted by name
  postconf -M [SERVICE[/TYPE]...]          master.cf services

-d shows defaults, -n only what main.cf sets, -h values without names,
-x expands $name references (never in the parameters Postfix keeps raw, such
as mailbox_command). Values print as Postfix prints them: runs of
whitespace, line continuations included, fold to one space. With a
configuration directory other than the default, -n shows config_directory
first, as Postfix's `postconf -c DIR -n` does.
"""

from __future__ import annotations

from mailferry.cli.options import parse_options
from mailferry.cli.output import Reporter

USAGE = "usage: mailferry postconf [-d | -n] [-h] [-x] [-M] [NAME...]"


def run(argv: list[str], config_dir: str, reporter: Reporter) -> int:
    flags, names, config_dir = parse_options(argv, "dhnxM", config_dir, USAGE, reporter)
    if "-d" in flags and "-n" in flags:
        return reporter.fatal("-d and -n cannot be used together")
    from mailferry.config.config import load
    from mailferry.config.parameters import RAW_PARAMETERS
    config = load(config_dir)
    if "-M" in flags:
        return _show_services(config_dir, names, reporter)
    for item in config.main_cf.diagnostics:
        reporter.diagnostic(item)
    try:
        for name, value in _selected(config, names, flags, reporter):
            if "-x" in flags and "-d" not in flags:
                value = config.expanded(name)
            elif "-x" in flags and name not in RAW_PARAMETERS:
                value = config.expand(value)
            value = " ".join(value.split())
            if "-h" in flags:
                print(value)
            else:
                print(f"{name} = {value}" if value else f"{name} =")
    except ValueError as exc:  # ConfigValueError, or ExpansionError from -d -x
        return reporter.fatal(str(exc))
    return 1 if reporter.errors else 0


def _selected(config, names: list[str], flags: set[str], reporter: Reporter):
    from mailferry.config.config import DEFAULT_CONFIG_DIR
    from mailferry.config.parameters import parameters
    if names:
        candidates = names
    elif "-n" in flags:
        # Postfix's postconf -n never shows these: each program sets them for itself. Nor a
        # setting nothing uses: it warns "unused parameter" instead.
        unused = _unused(config, reporter)
        candidates = sorted(set(config.settings) - unused - {"process_id", "process_name", "service_name"})
        if config.config_dir != DEFAULT_CONFIG_DIR and "config_directory" not in config.settings:
            candidates = sorted([*candidates, "config_directory"])  # Postfix counts -c DIR as set
    else:
        candidates = sorted(set(parameters()) | set(config.settings))
    for name in candidates:
        setting = config.settings.get(name)
        if "-d" in flags:
            value = config.default(name)
        elif "-n" in flags:
            value = setting.value if setting else None
            if name == "config_directory" and setting is None and not names:
                value = config.config_dir
            if value is None and names:
                continue
        else:
            value = config.raw(name)
        if value is None:
            if names:
                reporter.warning(f"{name}: unknown parameter")
            continue
        yield name, value


def _unused(config, reporter: Reporter) -> set[str]:
    """main.cf settings that are not Postfix parameters and that nothing refers to."""
    import os

    from mailferry.config.config import master_cf_path
    from mailferry.config.lint import lint_settings
    from mailferry.config.mastercf import read_master_cf
    path = master_cf_path(config.config_dir)
    services = read_master_cf(path).services if os.path.exists(path) else []
    commands = {service.name: service.command for service in services}
    overrides = [value for service in services for value in service.overrides.values()]
    unused = set()
    for item in lint_settings(config, commands, overrides):
        if item.message.startswith("unused parameter:") and item.parameter:
            unused.add(item.parameter)
            reporter.diagnostic(item)
    return unused


def _show_services(config_dir: str, wanted: list[str], reporter: Reporter) -> int:
    from mailferry.config.config import master_cf_path
    from mailferry.config.mastercf import format_service, read_master_cf
    master = read_master_cf(master_cf_path(config_dir))
    for item in master.diagnostics:
        reporter.diagnostic(item)
    for service in master.services:
        if wanted and service.name not in wanted and f"{service.name}/{service.type}" not in wanted:
            continue
        print(format_service(service))
    return 1 if reporter.errors else 0
