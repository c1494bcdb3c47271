"""tlsparams: Postfix's TLS vocabulary in Python ssl terms, shared by smtpd, the client and check."""

from __future__ import annotations

import ssl

import pytest

from mailferry.tlsparams import (
    CIPHERLIST_PARAMETERS, cipher_string, eecdh_curve, log_level, set_ciphers, ssl_options,
)

POSTFIX_LISTS = {"high": "aNULL:-aNULL:HIGH:@STRENGTH", "medium": "aNULL:-aNULL:HIGH:MEDIUM:+RC4:@STRENGTH",
                 "low": "aNULL:-aNULL:HIGH:MEDIUM:LOW:+RC4:@STRENGTH",
                 "export": "aNULL:-aNULL:HIGH:MEDIUM:LOW:EXPORT:+RC4:@STRENGTH", "null": "eNULL:!aNULL"}


def test_every_grade_has_its_parameter():
    assert set(CIPHERLIST_PARAMETERS) == set(POSTFIX_LISTS)


@pytest.mark.parametrize("grade", sorted(POSTFIX_LISTS))
def test_grade_is_its_cipherlist_and_openssl_takes_it(grade):
    text = cipher_string(grade.upper(), [], POSTFIX_LISTS)
    assert text == POSTFIX_LISTS[grade]
    set_ciphers(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), text)


def test_exclusions_are_appended_as_postfix_does():
    assert cipher_string("high", ["aNULL", "MD5", "DES"], POSTFIX_LISTS) == \
        "aNULL:-aNULL:HIGH:@STRENGTH:!aNULL:!MD5:!DES"


def test_unknown_grade_and_empty_selection():
    with pytest.raises(ValueError, match="unknown cipher grade 'strongest': use high, medium, low, export, null"):
        cipher_string("strongest", [], POSTFIX_LISTS)
    with pytest.raises(ValueError, match="OpenSSL selects no TLS 1.2 cipher"):
        set_ciphers(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), "HIGH:!ALL")


def test_ssl_options_names_and_masks():
    assert ssl_options("") == 0
    assert ssl_options("no_ticket, NO_COMPRESSION") == ssl.OP_NO_TICKET | ssl.OP_NO_COMPRESSION
    assert ssl_options("0x4000 PRIORITIZE_CHACHA") == 0x4000 | 0x200000
    with pytest.raises(ValueError, match="unknown SSL option 'NO_FUN'"):
        ssl_options("NO_FUN")


def test_eecdh_grades():
    assert eecdh_curve("auto", "prime256v1", "secp384r1") is None
    assert eecdh_curve("strong", "prime256v1", "secp384r1") == "prime256v1"
    assert eecdh_curve("ULTRA", "prime256v1", "secp384r1") == "secp384r1"
    with pytest.raises(ValueError, match="use auto, strong, ultra"):
        eecdh_curve("none", "prime256v1", "secp384r1")


@pytest.mark.parametrize("text, level", [("0", 0), ("1", 1), ("2", 2), ("9", 4), ("routine", 1),
                                         ("none", 0), ("debug", 2), ("routine, cache", 2)])
def test_log_levels(text, level):
    assert log_level(text) == level


def test_unknown_log_level():
    with pytest.raises(ValueError, match="unknown TLS log level 'chatty'"):
        log_level("chatty")
