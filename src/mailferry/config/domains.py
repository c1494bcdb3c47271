"""Postfix domain match lists (relay_domains): used by smtpd's relay control
and by routing, which sends relay domains to relay_transport."""

from __future__ import annotations

from mailferry.syntax import split_list


class DomainList:
    """A Postfix domain match list such as relay_domains: names (a name also
    matches its subdomains: parent_domain_matches_subdomains includes
    relay_domains by default), `.name` for subdomains only, `type:table`
    lookups, and `!` to exclude. Read left to right; the first match decides."""

    def __init__(self, value: str):
        self._entries: list[tuple[bool, object]] = []
        for item in split_list(value):
            negated = item.startswith("!")
            item = item[1:] if negated else item
            if ":" in item:
                from mailferry.tables import open_table
                self._entries.append((negated, open_table(item)))
            else:
                self._entries.append((negated, item.lower().rstrip(".")))

    def matches(self, domain: str) -> bool:
        for negated, entry in self._entries:
            if self._entry_matches(entry, domain):
                return not negated
        return False

    @staticmethod
    def _entry_matches(entry, domain: str) -> bool:
        if isinstance(entry, str):
            if entry.startswith("."):
                return domain.endswith(entry)
            return domain == entry or domain.endswith("." + entry)
        labels = domain.split(".")
        return any(entry.lookup_now(".".join(labels[index:])).found for index in range(len(labels)))
