"""What a master.cf pipe(8) service's attributes mean: argv= macros and the user= rules.

config/mastercf.py reads the attributes (PipeSpec); this module says what
Postfix's pipe makes of them, so that `mailferry check` (config/lint.py)
and the pipe agent (delivery/pipe.py) apply one rule:

- argv= words: `$name`, `${name}`, `$(name)` and `$$`, read as Postfix's
  mac_parse() reads them; a name pipe(8) does not list is an error.
- A word holding a per-recipient macro becomes one argument per recipient.
- user=name[:group] may be neither root nor mail_owner, nor have group id 0,
  mail_owner's group or setgid_group (pipe.c's get_service_attr()).
"""

from __future__ import annotations

import grp
import pwd
import re
from collections.abc import Sequence

# pipe(8): "a command-line argument that contains ${recipient} expands to as many
# command-line arguments as there are recipients", and so do these.
PER_RECIPIENT_MACROS = frozenset({"recipient", "original_recipient", "user", "extension", "mailbox", "domain"})
MESSAGE_MACROS = frozenset({
    "sender", "nexthop", "size", "queue_id", "envid", "client_address", "client_hostname",
    "client_port", "client_protocol", "client_helo", "sasl_method", "sasl_username", "sasl_sender",
})
KNOWN_MACROS = PER_RECIPIENT_MACROS | MESSAGE_MACROS
# Flags that put one recipient's address into the content.
SINGLE_RECIPIENT_FLAGS = "DO"

_NAME = re.compile(r"[A-Za-z0-9_]*")


class MacroError(ValueError):
    """An argv= word Postfix's pipe(8) refuses: an unknown, empty or unclosed macro name."""


def parse_word(word: str) -> list[tuple[bool, str]]:
    """An argv= word as (is_macro, text) pieces."""
    pieces: list[tuple[bool, str]] = []
    literal: list[str] = []
    position = 0
    while position < len(word):
        char = word[position]
        if char != "$":
            literal.append(char)
            position += 1
            continue
        if word[position + 1:position + 2] == "$":
            literal.append("$")
            position += 2
            continue
        name, position = _macro_name(word, position + 1)
        if literal:
            pieces.append((False, "".join(literal)))
            literal = []
        pieces.append((True, name))
    if literal:
        pieces.append((False, "".join(literal)))
    return pieces


def _macro_name(word: str, position: int) -> tuple[str, int]:
    opening = word[position:position + 1]
    if opening in ("{", "("):
        closing = "}" if opening == "{" else ")"
        depth, end = 1, position + 1
        while depth:
            if end >= len(word):
                raise MacroError(f'truncated macro reference: "{word}"')
            depth += (word[end] == opening) - (word[end] == closing)
            end += 1
        name, position = word[position + 1:end - 1], end
    else:
        name = _NAME.match(word, position).group()
        position += len(name)
    if not name:
        raise MacroError(f'empty macro name: "{word}"')
    if name not in KNOWN_MACROS:
        raise MacroError(f'unknown macro name: "{name}"')
    return name, position


def macros_in(word: str) -> set[str]:
    return {text for is_macro, text in parse_word(word) if is_macro}


def check_argv(argv: Sequence[str]) -> None:
    """Raise MacroError for the first word pipe(8) would refuse."""
    for word in argv:
        parse_word(word)


def per_recipient_words(argv: Sequence[str]) -> list[str]:
    return [word for word in argv if macros_in(word) & PER_RECIPIENT_MACROS]


def needs_one_command_per_recipient(argv: Sequence[str], flags: str) -> bool:
    """True when one command for several recipients would mix them up: per-recipient
    macros in more than one word (`-m ${extension} ${user}` would become
    `-m ext1 ext2 user1 user2`), or a header naming the one recipient (flags D, O).
    Postfix needs `<service>_destination_recipient_limit = 1` for these."""
    return len(per_recipient_words(argv)) > 1 or any(flag in flags for flag in SINGLE_RECIPIENT_FLAGS)


def account_problem(user: str, group: str | None, mail_owner: str, setgid_group: str) -> str | None:
    """Why pipe(8) would refuse user=USER[:GROUP], or None. The text starts with `user=`."""
    named = f"user={user}{':' + group if group else ''}"
    try:
        account = pwd.getpwnam(user)
    except KeyError:
        return f"{named}: no such account"
    gid = account.pw_gid
    if group:
        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError:
            return f"{named}: no such group"
    if account.pw_uid == 0:
        return f"{named}: the account has root privileges, which pipe(8) refuses; name an unprivileged account"
    owner = _account(mail_owner)
    if owner is not None and account.pw_uid == owner.pw_uid:
        return (f"{named}: the account is the mail system owner (mail_owner = {mail_owner}), which pipe(8) "
                "refuses; name another account")
    if gid == 0:
        return f"{named}: the privileged group id 0, which pipe(8) refuses"
    if owner is not None and gid == owner.pw_gid:
        return f"{named}: mail_owner {mail_owner}'s group id {gid}, which pipe(8) refuses"
    setgid = _group_id(setgid_group)
    if setgid is not None and gid == setgid:
        return f"{named}: setgid_group {setgid_group}'s group id {gid}, which pipe(8) refuses"
    return None


def _account(name: str) -> pwd.struct_passwd | None:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        return None


def _group_id(name: str) -> int | None:
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        return None
