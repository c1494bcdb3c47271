"""cidr: lookup tables, as cidr_table(5) describes them.

Each rule is `[!]network/length result` (IPv4 or IPv6; a bare address is a
full-length network, `[...]` brackets are allowed) and the first rule that
matches the key, an IP address, answers. `if [!]network` ... `endif`
guards the rules between them. A rule only ever matches an address of its
own family, negated or not, as in Postfix.

Addresses are read with the C library's inet_pton(3), as Postfix reads
them, so "010.1.1.1" or "fe80::1%eth0" is no address here either.
Malformed rules are skipped with Postfix's warning (`CidrTable.warnings`).
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

from mailferry.tables.pattern_rules import Result, Rule, RuleTable, run_rules, starts_with_keyword, statements
from mailferry.tables.result import MISSING, LookupResult, found

_SPACE = " \t\n\v\f\r"


@dataclass(frozen=True, slots=True)
class _Network:
    family: int
    network: int
    mask: int
    negated: bool

    def search(self, address: tuple[int, int]) -> bool | None:
        """True when the rule applies to (family, address as an integer); None when not."""
        family, value = address
        if family != self.family:
            return None
        return True if ((value & self.mask) == self.network) != self.negated else None


class _RuleError(ValueError):
    """Why a rule is skipped, in Postfix's words."""


class CidrTable(RuleTable):
    """The file format, inline form and if/endif blocks of regexp: and pcre:, with networks for patterns."""

    type_name = "cidr"

    def lookup_now(self, key: str) -> LookupResult:
        family = socket.AF_INET6 if ":" in key else socket.AF_INET
        try:
            packed = socket.inet_pton(family, key)
        except (OSError, ValueError):
            return MISSING
        # Every rule runs as "negated=False": _Network.search has already applied the `!`.
        return run_rules(self._rules, (family, int.from_bytes(packed, "big")))

    def _load(self, text: str) -> list[Rule]:
        rules: list[Rule] = []
        open_ifs: list[Rule] = []
        for line, statement in statements(text, self._warn):
            statement = statement.rstrip(_SPACE)
            try:
                if starts_with_keyword(statement, "if"):
                    network = _parse_network(*_negations(statement[2:]))
                    open_ifs.append(Rule(network.search, False, line, None))
                    rules.append(open_ifs[-1])
                elif starts_with_keyword(statement, "endif"):
                    if statement[5:].strip(_SPACE):
                        raise _RuleError("garbage after ENDIF")
                    if not open_ifs:
                        raise _RuleError("ENDIF without IF")
                    open_ifs.pop().skip_to = len(rules)
                else:
                    rules.append(_match_rule(statement, line, len(rules) + 1))
            except _RuleError as problem:
                self._warn(line, f"{problem}: skipping this rule")
        for rule in reversed(open_ifs):
            self._warn(rule.line, "IF has no matching ENDIF")
            rule.skip_to = len(rules)
        return rules


def _match_rule(statement: str, line: int, next_index: int) -> Rule:
    text, negated = _negations(statement)
    pattern, value = _split_key(text)
    network = _parse_network(pattern, negated)
    if not value:
        raise _RuleError("no lookup result")
    return Rule(network.search, False, line, Result((value,), found(value)), next_index)


def _split_key(text: str) -> tuple[str, str]:
    end = 0
    while end < len(text) and text[end] not in _SPACE:
        end += 1
    return text[:end], text[end:].strip(_SPACE)


def _negations(text: str) -> tuple[str, bool]:
    negated = False
    pos = 0
    while pos < len(text) and (text[pos] == "!" or text[pos] in _SPACE):
        negated ^= text[pos] == "!"
        pos += 1
    return text[pos:].rstrip(_SPACE), negated


def _parse_network(pattern: str, negated: bool) -> _Network:
    if not pattern:
        raise _RuleError("no address pattern")
    if pattern.startswith("["):
        # Brackets may hold the address ("[::1]/128") or the whole network ("[::1/128]").
        inside, bracket, after = pattern[1:].partition("]")
        if not bracket:
            raise _RuleError(f'missing \']\' character after "{pattern}"')
        if after and not after.startswith("/"):
            raise _RuleError(f'garbage after "[{inside}]"')
        if after:
            address_text, has_mask, length_text = inside, True, after[1:]
        else:
            address_text, has_mask, length_text = _split_mask(inside)
    else:
        address_text, has_mask, length_text = _split_mask(pattern)
    family = socket.AF_INET6 if ":" in address_text else socket.AF_INET
    bits = 128 if family == socket.AF_INET6 else 32
    if not has_mask:
        address = _pton(family, address_text)
        if address is None:
            raise _RuleError(f'bad address pattern: "{address_text}"')
        return _Network(family, address, (1 << bits) - 1, negated)
    written = f"{address_text}/{length_text}"
    if not length_text or not all(char in "0123456789" for char in length_text):
        raise _RuleError(f'bad mask value in "{written}"')
    length = int(length_text)
    if length > bits:
        raise _RuleError(f'bad mask length in "{written}"')
    address = _pton(family, address_text)
    if address is None:
        raise _RuleError(f'bad network value in "{written}"')
    mask = ((1 << bits) - 1) ^ ((1 << (bits - length)) - 1)
    if address & ~mask:
        network = socket.inet_ntop(family, (address & mask).to_bytes(bits // 8, "big"))
        raise _RuleError(f'non-null host address bits in "{written}", '
                         f'perhaps you should use "{network}/{length}" instead')
    return _Network(family, address, mask, negated)


def _split_mask(text: str) -> tuple[str, bool, str]:
    address, slash, length = text.partition("/")
    return address, bool(slash), length


def _pton(family: int, text: str) -> int | None:
    try:
        return int.from_bytes(socket.inet_pton(family, text), "big")
    except (OSError, ValueError):
        return None
