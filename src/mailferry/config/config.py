"""One configuration: main.cf settings over Postfix's defaults.

`Config.get(name)` answers with the expanded value of a parameter: a
service's `-o` override, else the main.cf setting, else the default (from
the parameter table, or computed from the host for myhostname and friends).
Typed readers (`time`, `size`, `integer`, `boolean`, `list`) raise
ConfigValueError naming the file, line and parameter.
"""

from __future__ import annotations

import os

from mailferry.config import hostinfo, values
from mailferry.config.expand import Expander, ExpansionError
from mailferry.config.maincf import MainCf, Setting, read_main_cf
from mailferry.config.parameters import RAW_PARAMETERS, lookup
from mailferry.syntax import split_list

DEFAULT_CONFIG_DIR = "/etc/mailferry"


class ConfigValueError(ValueError):
    """A parameter whose value cannot be used; the message says where and why."""

    def __init__(self, where: str, reason: str):
        super().__init__(f"{where}{reason}")
        self.reason = reason


class Config:
    def __init__(self, config_dir: str, main_cf: MainCf, overrides: dict[str, str] | None = None,
                 override_source: str = ""):
        self.config_dir = config_dir
        self.main_cf = main_cf
        self.overrides = overrides or {}
        self._override_source = override_source
        self._computed: dict[str, str] = {}
        self._expander = Expander(self.raw, RAW_PARAMETERS)

    @property
    def settings(self) -> dict[str, Setting]:
        return self.main_cf.settings

    def with_overrides(self, overrides: dict[str, str], source: str) -> Config:
        """The view a master.cf service has: its `-o name=value` on top of main.cf."""
        return Config(self.config_dir, self.main_cf, {**self.overrides, **overrides}, source)

    def raw(self, name: str) -> str | None:
        """The unexpanded value, or None when the parameter is neither set nor known."""
        if name in self.overrides:
            return self.overrides[name]
        setting = self.main_cf.settings.get(name)
        if setting is not None:
            return setting.value
        return self.default(name)

    def default(self, name: str) -> str | None:
        if name == "config_directory":
            return self.config_dir
        computed = self._computed_default(name)
        if computed is not None:
            return computed
        parameter = lookup(name)
        return parameter.default if parameter is not None else None

    def _computed_default(self, name: str) -> str | None:
        if name in self._computed:
            return self._computed[name]
        if name == "myhostname":
            value = hostinfo.default_myhostname(self._explicit_raw("mydomain"))
        elif name == "mydomain":
            value = hostinfo.default_mydomain(self.get("myhostname"))
        elif name == "mynetworks":
            value = hostinfo.default_mynetworks(self.get("mynetworks_style"))
        elif name == "process_id":
            value = str(os.getpid())
        elif name == "process_name":
            value = "mailferry"
        elif name == "service_name":
            value = ""  # outside a master.cf service
        else:
            return None
        self._computed[name] = value
        return value

    def _explicit_raw(self, name: str) -> str | None:
        if name in self.overrides:
            return self.overrides[name]
        setting = self.main_cf.settings.get(name)
        return setting.value if setting is not None else None

    def get(self, name: str) -> str:
        value = self.expanded(name)
        if name == "myorigin" and value.startswith("/"):
            return self._myorigin_from_file(value)
        return value

    def expanded(self, name: str) -> str:
        """The value after $name expansion, as `postconf -x` shows it (myorigin's /file/name
        stays a file name there: postconf does not read it)."""
        try:
            return self._expander.value_of(name)
        except ExpansionError as exc:
            raise ConfigValueError(self.where(name), str(exc)) from exc

    def _myorigin_from_file(self, path: str) -> str:
        """`myorigin = /etc/mailname`, Debian's default: the file's first line, trimmed, not
        $-expanded (Postfix's MYORIGIN_FROM_FILE, which Debian builds with)."""
        key = "myorigin file"
        if key not in self._computed:
            try:
                with open(path, encoding="utf-8", errors="surrogateescape") as handle:
                    first = handle.readline().strip()
            except OSError as exc:
                raise ConfigValueError(self.where("myorigin"), f"{path}: {exc.strerror}; create it "
                                       "with the domain that unqualified addresses get (one line), "
                                       "or set myorigin to that domain") from None
            if not first:
                raise ConfigValueError(self.where("myorigin"), f"file {path} is empty; write the "
                                       "domain that unqualified addresses get into it")
            self._computed[key] = first
        return self._computed[key]

    def expand(self, text: str) -> str:
        return self._expander.expand(text)

    def where(self, name: str) -> str:
        """`file, line N: parameter NAME: ` for messages about a parameter."""
        if name in self.overrides:
            return f"{self._override_source}: parameter {name}: "
        setting = self.main_cf.settings.get(name)
        if setting is not None:
            return f"{setting.file}, line {setting.line}: parameter {name}: "
        return f"default value of parameter {name}: "

    def time(self, name: str) -> int:
        parameter = lookup(name)
        unit = parameter.time_unit if parameter is not None and parameter.time_unit else "s"
        return self._typed(name, lambda text: values.parse_time(text, unit))

    def size(self, name: str) -> int:
        return self._typed(name, values.parse_size)

    def integer(self, name: str) -> int:
        return self._typed(name, values.parse_int)

    def boolean(self, name: str) -> bool:
        return self._typed(name, values.parse_bool)

    def list(self, name: str) -> list[str]:
        return split_list(self.get(name))

    def _typed(self, name: str, parse):
        text = self.get(name)
        try:
            return parse(text)
        except ValueError as exc:
            raise ConfigValueError(self.where(name), str(exc)) from exc


def main_cf_path(config_dir: str) -> str:
    return os.path.join(config_dir, "main.cf")


def master_cf_path(config_dir: str) -> str:
    return os.path.join(config_dir, "master.cf")


def load(config_dir: str = DEFAULT_CONFIG_DIR) -> Config:
    """Read main.cf from `config_dir`. Problems stay in `config.main_cf.diagnostics`."""
    return Config(config_dir, read_main_cf(main_cf_path(config_dir)))
