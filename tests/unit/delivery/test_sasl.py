import asyncio

import pytest

from mailferry.delivery.sasl import (
    DEFAULT_SECURITY_OPTIONS, SUPPORTED, Credentials, NoMechanism, SaslExchange, SaslLookupError,
    choose_mechanism, credential_keys, find_credentials,
)
from mailferry.tables import Maps, open_maps, open_table


def find(maps, *, sender="alice@example.com", sender_dependent=False, hostname="smtp.gmail.com",
         nexthop="[smtp.gmail.com]:587"):
    return asyncio.run(find_credentials(maps, sender=sender, sender_dependent=sender_dependent,
                                        hostname=hostname, nexthop=nexthop))


class Recording(Maps):
    """Real tables, plus a record of the keys asked for."""

    def __init__(self, tables):
        super().__init__(tables)
        self.keys = []

    async def lookup(self, key, partial=False):
        self.keys.append(key)
        return await super().lookup(key, partial)


# --- credentials -------------------------------------------------------------------------

def test_seed_password_file(tmp_path):
    source = tmp_path / "sasl_passwd"
    source.write_text("gmail-smtp.l.google.com user.name@gmail.com:password\n"
                      "smtp.gmail.com user.name@gmail.com:password\n")
    credentials = find(open_maps(f"texthash:{source}"))
    assert credentials == Credentials("user.name@gmail.com", "password")


def test_lookup_order_without_sender_dependence():
    maps = Recording([open_table("inline:{ nothing=here }")])
    assert find(maps, sender_dependent=False) is None
    assert maps.keys == ["smtp.gmail.com", "[smtp.gmail.com]:587"]  # the bare next hop is the host name


def test_lookup_order_with_sender_dependence():
    maps = Recording([open_table("inline:{ nothing=here }")])
    assert find(maps, sender_dependent=True, hostname="mx1.example.net", nexthop="example.net:2525") is None
    assert maps.keys == ["alice@example.com", "@example.com", "mx1.example.net", "example.net:2525",
                         "example.net"]


@pytest.mark.parametrize("entries, expected", [
    ("alice@example.com=a:1, @example.com=d:2, smtp.gmail.com=h:3", Credentials("a", "1")),
    ("@example.com=d:2, smtp.gmail.com=h:3", Credentials("d", "2")),
    ("smtp.gmail.com=h:3, [smtp.gmail.com]:587=n:4", Credentials("h", "3")),
    ("[smtp.gmail.com]:587=n:4, gmail.com=x:5", Credentials("n", "4")),
])
def test_first_found_wins(entries, expected):
    maps = open_maps(f"inline:{{ {entries} }}")
    assert find(maps, sender_dependent=True) == expected


def test_sender_keys_only_when_sender_dependent():
    maps = open_maps("inline:{ alice@example.com=a:1, smtp.gmail.com=h:3 }")
    assert find(maps, sender_dependent=False) == Credentials("h", "3")


def test_null_sender_is_not_looked_up():
    assert credential_keys(sender="", sender_dependent=True, hostname="relay.test", nexthop="relay.test") == \
        [("relay.test", False)]


def test_bare_next_hop_is_the_last_key():
    maps = open_maps("inline:{ relay.example.com=r:6 }")
    assert find(maps, hostname="10.0.0.5", nexthop="[relay.example.com]:587") == Credentials("r", "6")


def test_value_splits_at_the_first_colon():
    maps = open_maps("inline:{ smtp.gmail.com=user@gmail.com:pa:ss:word }")
    assert find(maps) == Credentials("user@gmail.com", "pa:ss:word")


def test_value_without_colon_is_a_username_with_empty_password():
    assert find(open_maps("inline:{ smtp.gmail.com=justuser }")) == Credentials("justuser", "")


def test_utf8_credentials(tmp_path):
    source = tmp_path / "sasl_passwd"
    source.write_text("smtp.gmail.com jörg@example.com:pässwörd\n", encoding="utf-8")
    credentials = find(open_maps(f"texthash:{source}"))
    assert credentials == Credentials("jörg@example.com", "pässwörd")
    assert SaslExchange("PLAIN", credentials).initial_response() == "\0jörg@example.com\0pässwörd".encode()


def test_regexp_tables_see_no_partial_domain_key(tmp_path):
    patterns = tmp_path / "sasl.regexp"
    patterns.write_text("/^@/ wrong:match\n/^smtp\\./ r:1\n")
    maps = open_maps(f"regexp:{patterns}")
    assert find(maps, sender_dependent=True) == Credentials("r", "1")


def test_tempfail_stops_the_search(unreachable_ldap):
    maps = open_maps(f"inline:{{ nothing=here }}, {unreachable_ldap}, inline:{{ smtp.gmail.com=h:s3cret }}")
    with pytest.raises(SaslLookupError) as caught:
        find(maps)
    message = str(caught.value)
    # Inline tables hold user:password pairs: their text never reaches the message.
    assert message.startswith(f"smtp_sasl_password_maps (one of inline:{{...}}, {unreachable_ldap}, "
                              "inline:{...}): lookup of 'smtp.gmail.com' failed temporarily: ")
    assert "no LDAP server answered" in message and "s3cret" not in message
    assert caught.value.key == "smtp.gmail.com"


def test_tempfail_of_a_single_table_names_it(unreachable_ldap):
    with pytest.raises(SaslLookupError, match=rf"^smtp_sasl_password_maps \({unreachable_ldap}\): lookup of "):
        find(open_maps(unreachable_ldap))


def test_repr_hides_the_password():
    credentials = Credentials("user.name@gmail.com", "s3cret")
    assert repr(credentials) == "Credentials(username='user.name@gmail.com', password=<hidden>)"
    assert "s3cret" not in str(credentials) and "s3cret" not in f"{[credentials]}"


# --- mechanism choice --------------------------------------------------------------------

def choose(offered, options=DEFAULT_SECURITY_OPTIONS, mechanism_filter=(),
           parameter="smtp_sasl_tls_security_options"):
    return choose_mechanism(tuple(offered), mechanism_filter=list(mechanism_filter),
                            security_options=list(options), options_parameter=parameter)


def no_mechanism(*args, **kwargs):
    with pytest.raises(NoMechanism) as caught:
        choose(*args, **kwargs)
    return str(caught.value)


def test_seed_noanonymous_allows_plain():
    assert choose(["LOGIN", "PLAIN", "XOAUTH2"], options=["noanonymous"]) == "PLAIN"


def test_login_when_plain_is_not_offered():
    assert choose(["LOGIN", "CRAM-MD5"], options=["noanonymous"]) == "LOGIN"


def test_default_options_forbid_plaintext_with_an_explanation():
    assert no_mechanism(["PLAIN", "LOGIN"]) == (
        "the server offers PLAIN LOGIN; smtp_sasl_tls_security_options = noplaintext, noanonymous "
        "forbids PLAIN LOGIN (plaintext passwords); to allow them over TLS, "
        "set smtp_sasl_tls_security_options = noanonymous")


def test_without_tls_the_advice_is_to_use_tls():
    text = no_mechanism(["PLAIN", "LOGIN"], parameter="smtp_sasl_security_options")
    assert text.startswith("the server offers PLAIN LOGIN; smtp_sasl_security_options = noplaintext, "
                           "noanonymous forbids PLAIN LOGIN (plaintext passwords); ")
    assert "smtp_tls_security_level = encrypt" in text
    assert "smtp_sasl_tls_security_options = noanonymous" in text
    assert text.endswith("set smtp_sasl_security_options = noanonymous")
    assert "\n" not in text


def test_lmtp_parameter_names_follow_the_caller():
    text = no_mechanism(["PLAIN"], parameter="lmtp_sasl_security_options")
    assert "lmtp_tls_security_level = encrypt" in text and "lmtp_sasl_tls_security_options" in text


def test_unsupported_mechanisms_only():
    assert no_mechanism(["CRAM-MD5"]) == \
        "the server offers CRAM-MD5 only; mailferry's SASL client supports PLAIN and LOGIN"


def test_no_auth_at_all():
    assert no_mechanism([]) == "the server offers no AUTH mechanism (no AUTH in its EHLO reply)"


def test_mixed_offer_names_each_cut():
    assert no_mechanism(["CRAM-MD5", "PLAIN", "LOGIN"]) == (
        "the server offers CRAM-MD5 PLAIN LOGIN; smtp_sasl_tls_security_options = noplaintext, noanonymous "
        "forbids PLAIN LOGIN (plaintext passwords); mailferry's SASL client does not support CRAM-MD5 "
        "(only PLAIN and LOGIN); to allow them over TLS, set smtp_sasl_tls_security_options = noanonymous")


@pytest.mark.parametrize("option, reason", [
    ("nodictionary", "open to dictionary attack"),
    ("noactive", "open to active attack"),
    ("mutual_auth", "no mutual authentication"),
])
def test_other_cyrus_options_also_forbid_plain_and_login(option, reason):
    text = no_mechanism(["PLAIN", "LOGIN"], options=["noanonymous", option])
    assert f"forbids PLAIN LOGIN ({reason})" in text
    assert text.endswith("set smtp_sasl_tls_security_options = noanonymous")


def test_nodictionary_forbids_cram_md5_too():
    text = no_mechanism(["CRAM-MD5", "DIGEST-MD5"], options=["nodictionary"])
    assert "nodictionary forbids CRAM-MD5 DIGEST-MD5 (open to dictionary attack)" in text


def test_noanonymous_forbids_anonymous():
    text = no_mechanism(["ANONYMOUS"], options=["noanonymous"])
    assert text == ("the server offers ANONYMOUS only; smtp_sasl_tls_security_options = noanonymous forbids "
                    "ANONYMOUS (anonymous login); mailferry's SASL client supports PLAIN and LOGIN")


def test_empty_options_allow_plaintext():
    assert choose(["PLAIN"], options=[]) == "PLAIN"


def test_unknown_security_option_is_a_configuration_error():
    with pytest.raises(ValueError, match="smtp_sasl_security_options: unknown security option 'noplain'"):
        choose(["PLAIN"], options=["noplain"], parameter="smtp_sasl_security_options")


def test_filter_narrows_the_offer():
    assert choose(["PLAIN", "LOGIN"], options=["noanonymous"], mechanism_filter=["login"]) == "LOGIN"
    assert choose(["PLAIN", "LOGIN"], options=["noanonymous"], mechanism_filter=["!plain", "login"]) == "LOGIN"


def test_filter_that_removes_everything():
    text = no_mechanism(["PLAIN", "LOGIN"], options=["noanonymous"], mechanism_filter=["cram-md5"])
    assert text == ("the server offers PLAIN LOGIN; smtp_sasl_mechanism_filter = cram-md5 removes PLAIN LOGIN; "
                    "to use PLAIN or LOGIN, add it to smtp_sasl_mechanism_filter or leave that parameter empty")


def test_filter_exclusions_alone_match_nothing():
    # Postfix match lists: a name that no pattern includes is not in the list.
    text = no_mechanism(["PLAIN"], options=["noanonymous"], mechanism_filter=["!gssapi"])
    assert "smtp_sasl_mechanism_filter = !gssapi removes PLAIN" in text


def test_filter_tables_are_ignored_and_said_so():
    assert choose(["PLAIN"], options=["noanonymous"], mechanism_filter=["hash:/etc/postfix/mechs"]) == "PLAIN"
    text = no_mechanism(["PLAIN"], mechanism_filter=["static:rest", "/etc/postfix/smtp_mechs"])
    assert ("smtp_sasl_mechanism_filter items static:rest, /etc/postfix/smtp_mechs are ignored "
            "(mailferry reads only mechanism names there, not tables or files)") in text
    assert "forbids PLAIN (plaintext passwords)" in text


def test_server_order_does_not_matter_plain_first():
    assert choose(["LOGIN", "PLAIN"], options=[]) == "PLAIN"
    assert SUPPORTED == ("PLAIN", "LOGIN")


def test_lower_case_offer_is_accepted():
    assert choose(["login"], options=[]) == "LOGIN"


# --- the exchange ------------------------------------------------------------------------

CREDENTIALS = Credentials("user.name@gmail.com", "password")


def test_plain_initial_response():
    exchange = SaslExchange("PLAIN", CREDENTIALS)
    assert exchange.initial_response() == b"\0user.name@gmail.com\0password"


def test_plain_when_the_server_asks_with_an_empty_challenge():
    exchange = SaslExchange("PLAIN", CREDENTIALS)
    assert exchange.answer(b"") == b"\0user.name@gmail.com\0password"
    with pytest.raises(ValueError, match="PLAIN takes no challenge"):
        exchange.answer(b"")


def test_plain_rejects_a_real_challenge():
    with pytest.raises(ValueError, match="unexpected PLAIN challenge"):
        SaslExchange("PLAIN", CREDENTIALS).answer(b"nonce")


def test_login_answers_username_then_password():
    exchange = SaslExchange("LOGIN", CREDENTIALS)
    assert exchange.initial_response() is None
    assert exchange.answer(b"Username:") == b"user.name@gmail.com"
    assert exchange.answer(b"Password:") == b"password"
    with pytest.raises(ValueError, match="third LOGIN challenge"):
        exchange.answer(b"Again:")


def test_exchange_refuses_other_mechanisms():
    with pytest.raises(ValueError, match="unsupported SASL mechanism 'CRAM-MD5'"):
        SaslExchange("CRAM-MD5", CREDENTIALS)


def test_plain_refuses_nul_in_credentials():
    with pytest.raises(ValueError, match="NUL"):
        SaslExchange("PLAIN", Credentials("a\0b", "c"))


def test_security_options_can_be_checked_at_start():
    from mailferry.delivery.sasl import check_security_options
    assert check_security_options(["NoAnonymous", ""], "smtp_sasl_security_options") == ["noanonymous"]
    with pytest.raises(ValueError, match="^lmtp_sasl_tls_security_options: unknown security option 'x'"):
        check_security_options(["x"], "lmtp_sasl_tls_security_options")


# --- what relay-check reports ------------------------------------------------------------

def test_find_credentials_entry_names_the_key_that_matched():
    from mailferry.delivery.sasl import find_credentials_entry
    maps = open_maps("inline:{ [smtp.gmail.com]:587=user@gmail.com:secret }")
    found = asyncio.run(find_credentials_entry(maps, sender="", sender_dependent=False, hostname="smtp.gmail.com",
                                           nexthop="[smtp.gmail.com]:587"))
    assert found == ("[smtp.gmail.com]:587", Credentials("user@gmail.com", "secret"))
    assert "secret" not in repr(found)


@pytest.mark.parametrize("mechanism_filter, options, expected", [
    ([], ["noanonymous"], [("PLAIN", ""), ("LOGIN", ""), ("CRAM-MD5", "not supported")]),
    ([], ["noplaintext", "noanonymous"],
     [("PLAIN", "forbidden by smtp_sasl_tls_security_options = noplaintext, noanonymous (plaintext passwords)"),
      ("LOGIN", "forbidden by"), ("CRAM-MD5", "not supported")]),
    (["login"], ["noanonymous"], [("PLAIN", "removed by smtp_sasl_mechanism_filter = login"), ("LOGIN", ""),
                                  ("CRAM-MD5", "removed by")]),
])
def test_mechanism_verdicts_give_each_exclusion_its_reason(mechanism_filter, options, expected):
    from mailferry.delivery.sasl import mechanism_verdicts
    verdicts = mechanism_verdicts(("plain", "LOGIN", "CRAM-MD5"), mechanism_filter=mechanism_filter,
                                  security_options=options, options_parameter="smtp_sasl_tls_security_options")
    assert [mechanism for mechanism, _ in verdicts] == [mechanism for mechanism, _ in expected]
    for (_, why), (_, start) in zip(verdicts, expected):
        assert why.startswith(start) if start else why == ""
    allowed = [mechanism for mechanism, why in verdicts if not why]
    try:
        chosen = choose_mechanism(("plain", "LOGIN", "CRAM-MD5"), mechanism_filter=mechanism_filter,
                                  security_options=options, options_parameter="smtp_sasl_tls_security_options")
    except NoMechanism:
        chosen = None
    assert chosen == (allowed[0] if allowed else None)   # the same cuts as delivery's choice
