"""smtp_tls_policy_maps: a level per next hop, its attributes, and the lookup keys."""

import asyncio

import pytest

from mailferry.config import config as config_module
from mailferry.delivery.tls_policies import TlsPolicyError, TlsPolicyTable
from mailferry.tables import open_maps


class ListLog:
    def __init__(self):
        self.warnings = []

    def warning(self, program, text):
        self.warnings.append(text)


POLICIES = ("inline:{ [smtp.gmail.com]:587=secure, "
            "{ example.com = verify match=hostname:mail.example.com protocols=>=TLSv1.3 }, "
            "{ .example.net = encrypt ciphers=high }, none.example=none, "
            "{ bad.example = verify colour=blue }, dane.example=dane, { empty.example = may servername=hostname } }")


def table(tmp_path, main_cf="smtp_tls_security_level = may\n", policies=POLICIES, prefix="smtp"):
    (tmp_path / "main.cf").write_text(main_cf)
    log = ListLog()
    return TlsPolicyTable(open_maps(policies), config_module.load(str(tmp_path)), prefix, log, "smtp"), log


def policy(tls_table, nexthop, domain=None, bracketed=None):
    domain = domain if domain is not None else nexthop.strip("[]").partition("]")[0]
    bracketed = nexthop.startswith("[") if bracketed is None else bracketed
    return asyncio.run(tls_table.policy_for(nexthop, domain, bracketed))


def test_the_next_hop_as_written_picks_its_level(tmp_path):
    tls_table, _ = table(tmp_path)
    found = policy(tls_table, "[smtp.gmail.com]:587", "smtp.gmail.com")
    assert found.level == "secure" and found.verifies
    assert found.match == ("nexthop", "dot-nexthop")      # smtp_tls_secure_cert_match's default
    # the same host written another way is another next hop
    assert policy(tls_table, "[smtp.gmail.com]", "smtp.gmail.com") is None


def test_attributes_stand_for_their_parameters(tmp_path):
    tls_table, _ = table(tmp_path)
    found = policy(tls_table, "example.com", bracketed=False)
    assert found.level == "verify"
    assert found.match == ("hostname", "mail.example.com")
    assert found.protocols == ">=TLSv1.3"
    assert policy(tls_table, "empty.example", bracketed=False).servername == "hostname"


def test_parent_domains_match_with_a_leading_dot(tmp_path):
    tls_table, log = table(tmp_path)
    assert policy(tls_table, "mx.example.net", bracketed=False).level == "encrypt"
    assert policy(tls_table, "example.net", bracketed=False) is None   # .example.net is subdomains only
    assert log.warnings == ["smtp_tls_policy_maps entry .example.net: attribute ciphers is not supported "
                            "by mailferry and has no effect"]
    # bracketed next hops are never looked up by parent domain
    assert policy(tls_table, "[mx.example.net]", "mx.example.net") is None


def test_none_turns_tls_off_for_one_destination(tmp_path):
    tls_table, _ = table(tmp_path, "smtp_tls_security_level = encrypt\n")
    assert not policy(tls_table, "none.example", bracketed=False).offers_tls


def test_bad_entries_are_refused_with_their_key(tmp_path):
    tls_table, _ = table(tmp_path)
    with pytest.raises(TlsPolicyError, match="entry bad.example: unknown or unsupported attribute 'colour'"):
        policy(tls_table, "bad.example", bracketed=False)
    with pytest.raises(TlsPolicyError, match="'dane' is not supported"):
        policy(tls_table, "dane.example", bracketed=False)


def test_a_failing_table_is_a_temporary_problem(tmp_path, unreachable_ldap):
    tls_table, _ = table(tmp_path, policies=unreachable_ldap)
    with pytest.raises(TlsPolicyError, match="smtp_tls_policy_maps lookup of example.com failed"):
        policy(tls_table, "example.com", bracketed=False)


def test_the_lmtp_client_names_its_own_parameters(tmp_path):
    tls_table, _ = table(tmp_path, policies="inline:{ { lmtp.example = verify colour=x } }", prefix="lmtp")
    with pytest.raises(TlsPolicyError, match="lmtp_tls_policy_maps entry lmtp.example"):
        policy(tls_table, "lmtp.example", bracketed=False)
