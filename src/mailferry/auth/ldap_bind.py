"""smtpd_sasl_type = ldap (mailferry's own): the directory checks the password.

    smtpd_sasl_type = ldap
    smtpd_sasl_path = /etc/postfix/ldap-sasl.cf         (or ldap:/etc/postfix/ldap-sasl.cf)

    # /etc/postfix/ldap-sasl.cf: an ldap_table(5) file
    server_host = ldap://ldap.example.com
    search_base = ou=People, dc=example, dc=com
    query_filter = (uid=%s)
    bind = yes                        # optional: who may search
    bind_dn = cn=mail, dc=example, dc=com
    bind_pw = ...

The login name is looked up with query_filter, exactly as the ldap table would look it up (the
same client: servers, failover, timeouts, TLS); `%s` is escaped, so `*` or `)(uid=*` match
only themselves. Exactly one entry must be found; then a fresh connection binds as that entry's
DN with the client's password. No entry, several, or a wrong password: 535. No server answers:
454. result_attribute is not used.
"""

from __future__ import annotations

from mailferry.auth.table import BuiltInBackend, unsuccessful
from mailferry.auth.verdict import OK, Verdict
from mailferry.tables.ldap import LdapTable


class LdapBindBackend(BuiltInBackend):
    name = "ldap"

    def __init__(self, sasl_path: str, local_domain: str, failure_delay: float, warn=lambda text: None):
        path = sasl_path[len("ldap:"):] if sasl_path.startswith("ldap:") else sasl_path
        if not path.startswith("/"):
            raise ValueError(f"smtpd_sasl_type = ldap needs smtpd_sasl_path = /path/of/an/ldap_table.cf, "
                             f"not {sasl_path!r}")
        super().__init__(local_domain, failure_delay)
        self.table = LdapTable(path, warn)

    async def check(self, user: str, password: str) -> Verdict:
        result = await self.table.bind_as_entry(user, password)
        if (verdict := unsuccessful(result, self.table.path)) is not None:
            return verdict
        return Verdict(OK, username=user.lower())

    def close(self) -> None:
        self.table.close()
