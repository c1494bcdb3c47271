"""Running as mail_owner: bind as root, then give root up.

Started by root, the daemon binds its listeners (port 25 needs root), makes
the queue directory mail_owner's, and switches to mail_owner's uid and gid
before it reads a single byte from the network. Started by anyone else, it
runs as that user and says so.
"""

from __future__ import annotations

import os
import pwd
from dataclasses import dataclass


class PrivilegeError(Exception):
    pass


@dataclass(frozen=True, slots=True)
class Owner:
    name: str
    uid: int
    gid: int


def resolve_owner(mail_owner: str) -> Owner:
    """The account to run as: mail_owner when we are root, else ourselves."""
    if os.geteuid() != 0:
        entry = pwd.getpwuid(os.geteuid())
        return Owner(entry.pw_name, entry.pw_uid, os.getegid())
    try:
        entry = pwd.getpwnam(mail_owner)
    except KeyError:
        raise PrivilegeError(
            f"mail_owner {mail_owner}: no such user; create it "
            f"(useradd --system --home-dir /var/spool/mailferry --shell /usr/sbin/nologin {mail_owner}) "
            "or set mail_owner in main.cf") from None
    if entry.pw_uid == 0:
        raise PrivilegeError(f"mail_owner {mail_owner} is root: choose an unprivileged account")
    return Owner(entry.pw_name, entry.pw_uid, entry.pw_gid)


def give_to(paths: list[str], owner: Owner) -> None:
    if os.geteuid() != 0:
        return
    for path in paths:
        os.chown(path, owner.uid, owner.gid, follow_symlinks=False)


def drop_to(owner: Owner) -> None:
    if os.geteuid() != 0:
        return
    os.setgroups([])
    os.setgid(owner.gid)
    os.setuid(owner.uid)
    if os.geteuid() == 0:
        raise PrivilegeError("could not give up root")

