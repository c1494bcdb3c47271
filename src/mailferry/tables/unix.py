"""`unix:passwd.byname` and `unix:group.byname`: the system's accounts as a table (Postfix's dict_unix).

The key is a login (or group) name, folded to lower case as Postfix does;
the value is the passwd(5) (or group(5)) line: `name:x:uid:gid:gecos:home:shell`,
`name:x:gid:member,member`. The default local_recipient_maps,
`proxy:unix:passwd.byname $alias_maps`, makes every account a known local
recipient this way. A name with `@` or `/` in it is never an account.

`nis:` maps (the second half of Postfix's default alias_maps) are here too:
mailferry has no NIS client, and Postfix on a host without a NIS domain
answers every NIS lookup "not found"; so does NisTable.
"""

from __future__ import annotations

import grp
import pwd

from mailferry.tables.base import Table, TableError
from mailferry.tables.result import MISSING, LookupResult, found, tempfail

MAPS = ("passwd.byname", "group.byname")


class UnixTable(Table):
    type_name = "unix"

    def __init__(self, name: str):
        if name not in MAPS:
            raise TableError(f"unix:{name}: unknown UNIX map; use unix:passwd.byname or unix:group.byname")
        super().__init__(name)

    def lookup_now(self, key: str) -> LookupResult:
        key = key.lower()
        if not key or "@" in key or "/" in key or "\0" in key:
            return MISSING
        try:
            if self.name == "passwd.byname":
                entry = pwd.getpwnam(key)
                return found(f"{entry.pw_name}:{entry.pw_passwd}:{entry.pw_uid}:{entry.pw_gid}:"
                             f"{entry.pw_gecos}:{entry.pw_dir}:{entry.pw_shell}")
            group = grp.getgrnam(key)
            return found(f"{group.gr_name}:{group.gr_passwd}:{group.gr_gid}:{','.join(group.gr_mem)}")
        except KeyError:
            return MISSING
        except OSError as problem:     # NSS could not answer now (an LDAP or NIS backend down)
            return tempfail(f"unix:{self.name} lookup of {key}: {problem}")


class NisTable(Table):
    type_name = "nis"
    is_pattern = False

    def lookup_now(self, key: str) -> LookupResult:
        return MISSING
