"""debug_peer_list and debug_peer_level (postconf(5)): more logging for the peers listed.

Postfix raises its verbose level by debug_peer_level for a peer that debug_peer_list
matches; at any level its smtpd then logs the whole SMTP conversation with that client,
`< host[addr]: COMMAND` and `> host[addr]: REPLY` (smtpd_chat.c). mailferry logs that
conversation and nothing more (its other verbose output differs from Postfix's anyway);
debug_peer_level = 0 turns it off. The list is Postfix's namadr list: host names (with
their subdomains, parent_domain_matches_subdomains lists debug_peer_list), `.domain` for
subdomains only, addresses and networks, `type:table` (looked up with the name, then
the address), and `!` to exclude; the first entry that matches decides.

With debug_peer_list empty (the default) nothing here runs at all.
"""

from __future__ import annotations

import ipaddress

from mailferry.config.config import Config
from mailferry.maillog import Log
from mailferry.syntax import split_list
from mailferry.tables import SUPPORTED_TYPES, Table, open_table
from mailferry.tables.match_lists import answering_now


class DebugPeers:
    def __init__(self, value: str, level: int):
        self.level = level
        self._entries: list[tuple[bool, object]] = []
        for item in split_list(value):
            negated = item.startswith("!")
            text = item[1:] if negated else item
            self._entries.append((negated, _entry(text)))

    @classmethod
    def from_config(cls, config: Config) -> DebugPeers | None:
        value = config.get("debug_peer_list").strip()
        level = config.integer("debug_peer_level")
        return cls(value, level) if value and level > 0 else None

    def matches(self, name: str, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            ip = None
        name = name.lower().rstrip(".")
        for negated, entry in self._entries:
            if _entry_matches(entry, name, address, ip):
                return not negated
        return False


def _entry(text: str) -> object:
    if text.partition(":")[0].lower() in SUPPORTED_TYPES:
        return answering_now(open_table(text))
    try:
        return ipaddress.ip_network(text.replace("[", "").replace("]", ""), strict=False)
    except ValueError:
        return text.lower().rstrip(".")


def _entry_matches(entry: object, name: str, address: str, ip) -> bool:
    if isinstance(entry, str):
        if entry.startswith("."):
            return name.endswith(entry)
        return name == entry or name.endswith("." + entry)
    if isinstance(entry, Table):
        return entry.lookup_now(name).found or entry.lookup_now(address).found
    return ip is not None and ip.version == entry.version and ip in entry


class PeerChat(list):
    """The session history (ServerConnection.transcript) that also logs each line as Postfix's
    verbose smtpd does. `keep`: whether the lines are kept for notify_classes as well."""

    def __init__(self, log: Log, client: str, keep: bool):
        super().__init__()
        self.log, self.client, self.keep = log, client, keep

    def append(self, line: str) -> None:
        direction = "<" if line.startswith("In:") else ">"
        self.log.line("smtpd", f"{direction} {self.client}: {line[5:]}")
        if self.keep:
            super().append(line)

    def fresh(self) -> PeerChat:
        return PeerChat(self.log, self.client, self.keep)
