"""smtp_tls_policy_maps: a TLS level per next hop, as in Postfix's TLS_README.

An entry is `[smtp.gmail.com]:587  secure match=.google.com:.gmail.com`:
a level, then attributes. The table is searched with the next hop exactly
as the route wrote it, then (for a bare domain) with `.parent` domains, so
`.example.com` covers every subdomain. A found entry replaces the service's
smtp_tls_security_level for that next hop; its attributes stand for the
matching parameters (match= for *_cert_match, protocols= for the protocols,
servername= for smtp_tls_servername). The policy is built by
TlsPolicy.from_config itself, so an entry is checked as strictly as main.cf.
"""

from __future__ import annotations

from mailferry.config.config import Config
from mailferry.delivery.client_parameters import client_parameter
from mailferry.delivery.tls import TlsPolicy
from mailferry.maillog import Log
from mailferry.tables import Maps

# Attributes Postfix knows that change nothing here (cipher grades are not configurable in mailferry).
IGNORED_ATTRIBUTES = ("ciphers", "exclude", "connection_reuse", "enable_rpk")


class TlsPolicyError(Exception):
    """The entry cannot be used now: a failed lookup or a bad entry. The mail is deferred."""


class TlsPolicyTable:
    def __init__(self, maps: Maps, config: Config, prefix: str, log: Log, program: str):
        self.maps = maps
        self.config = config
        self.prefix = prefix
        self.log = log
        self.program = program
        self._policies: dict[str, TlsPolicy | None] = {}

    async def policy_for(self, nexthop: str, domain: str, bracketed: bool) -> TlsPolicy | None:
        """The entry's policy, or None when the table has none for this next hop."""
        if nexthop in self._policies:
            return self._policies[nexthop]
        entry = await self._entry(nexthop, domain, bracketed)
        policy = None if entry is None else self._policy(*entry)
        self._policies[nexthop] = policy
        return policy

    async def _entry(self, nexthop: str, domain: str, bracketed: bool) -> tuple[str, str] | None:
        keys = [nexthop]
        if not bracketed and domain:
            labels = domain.split(".")
            keys += [domain] if domain != nexthop else []
            keys += ["." + ".".join(labels[index:]) for index in range(1, len(labels))]
        for key in keys:
            result = await self.maps.lookup(key.lower(), partial=key.startswith("."))
            if result.tempfail:
                raise TlsPolicyError(f"{self._parameter('smtp_tls_policy_maps')} lookup of {key} failed: "
                                     f"{result.reason}")
            if result.found:
                return key, result.value
        return None

    def _policy(self, key: str, value: str) -> TlsPolicy:
        words = value.split()
        if not words:
            raise TlsPolicyError(f"{self._parameter('smtp_tls_policy_maps')}: empty entry for {key}")
        level = words[0].lower()
        overrides = {self._parameter("smtp_tls_security_level"): level}
        for word in words[1:]:
            name, equals, text = word.partition("=")
            overrides.update(self._attribute(key, level, name.lower(), text if equals else None))
        config = self.config.with_overrides(overrides, f"{self._parameter('smtp_tls_policy_maps')} entry {key}")
        try:
            return TlsPolicy.from_config(config, self.prefix)
        except ValueError as problem:
            raise TlsPolicyError(str(problem)) from None

    def _attribute(self, key: str, level: str, name: str, text: str | None) -> dict[str, str]:
        if text is None:
            raise TlsPolicyError(f"{self._parameter('smtp_tls_policy_maps')} entry {key}: "
                                 f"attribute {name!r} needs a value (name=value)")
        if name == "match":
            parameter = "smtp_tls_secure_cert_match" if level == "secure" else "smtp_tls_verify_cert_match"
            return {self._parameter(parameter): text.replace(":", " ")}
        if name == "protocols":
            parameter = "smtp_tls_protocols" if level == "may" else "smtp_tls_mandatory_protocols"
            return {self._parameter(parameter): text.replace(":", " ")}
        if name == "servername":
            return {self._parameter("smtp_tls_servername"): text}
        if name in IGNORED_ATTRIBUTES:
            self.log.warning(self.program, f"{self._parameter('smtp_tls_policy_maps')} entry {key}: "
                                           f"attribute {name} is not supported by mailferry and has no effect")
            return {}
        raise TlsPolicyError(f"{self._parameter('smtp_tls_policy_maps')} entry {key}: unknown or "
                             f"unsupported attribute {name!r} (mailferry knows match, protocols, servername)")

    def _parameter(self, smtp_name: str) -> str:
        return client_parameter(self.prefix, smtp_name)
