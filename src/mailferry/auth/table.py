"""smtpd_sasl_type = table (mailferry's own): users and password hashes in a lookup table.

    smtpd_sasl_type = table
    smtpd_sasl_path = texthash:/etc/mailferry/sasl_users     (any table type: hash, lmdb, ldap...)

    # /etc/mailferry/sasl_users: written with `mailferry pw`
    user1   {ARGON2ID}$argon2id$v=19$m=65536,t=3,p=1$...
    user3   {BLF-CRYPT}$2y$05$...

For sites that run no Dovecot. The hashes are those `doveadm pw` writes (passwords.py), so a
Dovecot passwd-file's hashes can be copied over. Verification runs in a worker thread.
"""

from __future__ import annotations

import asyncio

from mailferry.auth import passwords
from mailferry.auth.mechanisms import Credentials
from mailferry.auth.verdict import FAIL, OK, TEMPFAIL, ClientContext, Verdict
from mailferry.tables import open_table
from mailferry.tables.base import Table
from mailferry.tables.result import LookupResult

FAILURE = "authentication failure"
AUTHZID_DIFFERS = "authorization identity differs from the login name"


class BuiltInBackend:
    """What the table and LDAP backends share: the login name, and a lookup's outcome as a verdict."""

    name = ""

    def __init__(self, local_domain: str, failure_delay: float):
        self.local_domain = local_domain
        self.failure_delay = failure_delay

    async def verify(self, credentials: Credentials, client: ClientContext) -> Verdict:
        user = login_name(credentials, self.local_domain)
        if user is None:
            return Verdict(FAIL, reason=AUTHZID_DIFFERS)
        return await self.check(user, credentials.password)

    async def check(self, user: str, password: str) -> Verdict:
        raise NotImplementedError


def unsuccessful(result: LookupResult, source: str) -> Verdict | None:
    """The verdict for a lookup that did not find the user, or None when it did."""
    if result.tempfail:
        return Verdict(TEMPFAIL, reason=f"{source}: {result.reason or 'lookup failed'}")
    if not result.found:
        return Verdict(FAIL, reason=FAILURE)
    return None


class TableBackend(BuiltInBackend):
    name = "table"

    def __init__(self, table_spec: str, local_domain: str, failure_delay: float,
                 warn=lambda text: None):
        if not table_spec:
            raise ValueError("smtpd_sasl_type = table needs smtpd_sasl_path = type:/path/of/the/users/table")
        super().__init__(local_domain, failure_delay)
        self.table: Table = open_table(table_spec)
        self.warn = warn

    async def check(self, user: str, password: str) -> Verdict:
        result = await self.table.lookup(user)
        if (verdict := unsuccessful(result, self.table.spec)) is not None:
            return verdict
        stored = result.value.strip()
        try:
            matches = await asyncio.get_running_loop().run_in_executor(None, passwords.verify, password, stored)
        except passwords.HashFormatError as error:
            self.warn(f"{self.table.spec}: the password of {user!r}: {error}")
            return Verdict(TEMPFAIL, reason="Authentication backend error")
        if not matches:
            return Verdict(FAIL, reason=FAILURE)
        return Verdict(OK, username=user.lower() if self.table.folds_keys else user)

    def close(self) -> None:
        self.table.close()


def login_name(credentials: Credentials, local_domain: str) -> str | None:
    """The name to look up: `user@smtpd_sasl_local_domain` for a bare name when that is set.
    None when the client asks to act as someone else (an authzid that is not itself):
    the built-in backends know no administrators who may do that."""
    user = credentials.username
    if local_domain and "@" not in user:
        user = f"{user}@{local_domain}"
    if credentials.authzid and credentials.authzid not in (credentials.username, user):
        return None
    return user
