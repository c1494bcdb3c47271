"""`ldap:` tables: the interface only, until the LDAP client lands.

Opening one succeeds, so a configuration that names it loads; every lookup
is a temporary failure, so mail waits in the queue (4xx) rather than being
routed as if the directory had no entry.
"""

from __future__ import annotations

from mailferry.tables.base import Table
from mailferry.tables.result import LookupResult, tempfail

NOT_IMPLEMENTED = "ldap tables are not implemented yet in this mailferry version"


class LdapTable(Table):
    type_name = "ldap"

    def __init__(self, name: str):
        super().__init__(name)
        self.warnings = [f"ldap:{name}: {NOT_IMPLEMENTED}; every lookup will be deferred"]

    async def lookup(self, key: str) -> LookupResult:
        return tempfail(NOT_IMPLEMENTED)
