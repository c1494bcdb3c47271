"""What main.cf says about milters: the list (smtpd_milters, non_smtpd_milters) with Postfix's
per-milter `{ name, setting=value, ... }` overrides, the time-outs, the protocol version, the
default action and the macros to send at each stage."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from mailferry.config.config import Config, ConfigValueError
from mailferry.config.values import parse_time
from mailferry.milter import protocol as p

DEFAULT_ACTIONS = ("accept", "reject", "tempfail", "quarantine", "shutdown")

# main.cf parameter -> the command whose macros it lists.
MACRO_PARAMETERS = {
    "milter_connect_macros": p.SMFIC_CONNECT,
    "milter_helo_macros": p.SMFIC_HELO,
    "milter_mail_macros": p.SMFIC_MAIL,
    "milter_rcpt_macros": p.SMFIC_RCPT,
    "milter_data_macros": p.SMFIC_DATA,
    "milter_end_of_header_macros": p.SMFIC_EOH,
    "milter_end_of_data_macros": p.SMFIC_BODYEOB,
    "milter_unknown_command_macros": p.SMFIC_UNKNOWN,
}


@dataclass(frozen=True, slots=True)
class MilterSpec:
    """One milter: `inet:host:port` or `unix:/path`, and its own settings."""

    name: str
    default_action: str = "tempfail"
    connect_timeout: float = 30.0
    command_timeout: float = 30.0
    content_timeout: float = 300.0
    protocol: int = 6
    no_header_reply: bool = False


@dataclass(frozen=True, slots=True)
class MilterSettings:
    milters: tuple[MilterSpec, ...]
    macros: dict[bytes, tuple[str, ...]] = field(default_factory=dict)   # SMFIC_* -> macro names
    daemon_name: str = ""
    v: str = ""
    macro_defaults: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_config(cls, config: Config, parameter: str = "smtpd_milters",
                    milter_list: str | None = None) -> MilterSettings:
        """The milters `parameter` names (or `milter_list`, e.g. from smtpd_milter_maps)."""
        text = config.get(parameter) if milter_list is None else milter_list
        where = config.where(parameter)
        base = MilterSpec(
            name="", default_action=_action(config.get("milter_default_action"), where),
            connect_timeout=config.time("milter_connect_timeout"),
            command_timeout=config.time("milter_command_timeout"),
            content_timeout=config.time("milter_content_timeout"),
            **_protocol(config.get("milter_protocol"), config.where("milter_protocol")))
        milters = tuple(_spec(item, base, where) for item in split_milters(text))
        macros = {command: tuple(config.list(name)) for name, command in MACRO_PARAMETERS.items()}
        return cls(milters=milters, macros=macros, daemon_name=config.get("milter_macro_daemon_name"),
                   v=config.get("milter_macro_v"),
                   macro_defaults=_macro_defaults(config.get("milter_macro_defaults")))


def split_milters(text: str) -> list[str]:
    """`a, { b, x=y }  c` -> ["a", "{ b, x=y }", "c"]: commas and spaces separate, braces group."""
    items, current, depth = [], "", 0
    for char in text:
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
        if depth == 0 and (char in ", \t\r\n"):
            if current.strip():
                items.append(current.strip())
            current = ""
            continue
        current += char
        if depth == 0 and char == "}":
            items.append(current.strip())
            current = ""
    if current.strip():
        items.append(current.strip())
    return items


def _spec(item: str, base: MilterSpec, where: str) -> MilterSpec:
    if not item.startswith("{"):
        return replace(base, name=item)
    inner = item.strip("{} \t")
    parts = [part.strip() for part in inner.split(",") if part.strip()]
    if not parts:
        raise ConfigValueError(where, f"empty milter entry: {item}")
    spec = replace(base, name=parts[0])
    for setting in parts[1:]:
        key, equals, value = (piece.strip() for piece in setting.partition("="))
        if not equals:
            raise ConfigValueError(where, f"milter {parts[0]}: expected name=value, found {setting!r}")
        try:
            if key == "default_action":
                spec = replace(spec, default_action=_action(value, where))
            elif key in ("connect_timeout", "command_timeout", "content_timeout"):
                spec = replace(spec, **{key: float(parse_time(value, "s"))})
            elif key == "protocol":
                spec = replace(spec, **_protocol(value, where))
            else:
                raise ConfigValueError(where, f"milter {parts[0]}: unknown setting {key!r} (Postfix knows "
                                              "default_action, connect_timeout, command_timeout, "
                                              "content_timeout, protocol)")
        except ValueError as problem:
            raise ConfigValueError(where, f"milter {parts[0]}: {key}: {problem}") from problem
    return spec


def _action(value: str, where: str) -> str:
    action = value.strip().lower()
    if action not in DEFAULT_ACTIONS:
        raise ConfigValueError(where, f"milter default action {value!r}: use one of {', '.join(DEFAULT_ACTIONS)}")
    return action


def _protocol(value: str, where: str) -> dict:
    """milter_protocol: a version (2, 3, 4 or 6), optionally with `no_header_reply`."""
    version, no_header_reply = 0, False
    for word in value.replace(",", " ").split():
        if word == "no_header_reply":
            no_header_reply = True
        elif word.isdigit() and int(word) in p.PROTOCOL_MASKS and not version:
            version = int(word)
        else:
            raise ConfigValueError(where, f"milter protocol {value!r}: use a version of 2, 3, 4 or 6")
    if not version:
        raise ConfigValueError(where, f"milter protocol {value!r}: no protocol version")
    return {"protocol": version, "no_header_reply": no_header_reply}


def _macro_defaults(text: str) -> dict[str, str]:
    """milter_macro_defaults: `name=value` pairs, e.g. `{auth_type}=none`."""
    defaults = {}
    for item in text.replace(",", " ").split():
        name, _, value = item.partition("=")
        defaults[name] = value
    return defaults
