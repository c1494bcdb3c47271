"""mailferry.refusals: every receiving-side failure gets Postfix's reply.

The texts are Postfix 3.7's: cleanup_strerror() for the queue, smtpd_check.c
for restrictions ("<rcpt>: Relay access denied", "Server configuration
error", "Temporary lookup failure")."""

from __future__ import annotations

import errno

import pytest

from mailferry import refusals
from mailferry.config.config import Config
from mailferry.config.maincf import parse_main_cf
from mailferry.queue.store import QueueError, QueueFull
from mailferry.refusals import DEFER, REJECT


def wire(refusal: refusals.Refusal) -> bytes:
    return refusal.reply.to_bytes()


def test_a_full_queue_is_452_insufficient_system_storage():
    refusal = refusals.queue_failure(QueueFull("/var/spool/mailferry/queue.db: the queue is full"))
    assert wire(refusal) == b"452 4.3.1 Insufficient system storage\r\n"
    assert refusal.action == DEFER
    assert refusal.log_reason == "queue is full: mail refused with 452 4.3.1"


def test_a_queue_write_error_is_451_and_the_log_says_why():
    refusal = refusals.queue_failure(QueueError("disk I/O error"))
    assert wire(refusal) == b"451 4.3.0 Error: queue file write error\r\n"
    assert refusal.log_reason == "queue file write error: disk I/O error"


@pytest.mark.parametrize("error", [QueueError("x"), QueueFull("x")])
def test_the_reply_code_is_the_one_the_queue_error_carries(error):
    reply = refusals.queue_failure(error).reply
    assert (reply.code, reply.enhanced) == (error.reply_code, error.enhanced_status)


def test_a_maildrop_write_error_names_the_system_error():
    refusal = refusals.maildrop_write_error(OSError(errno.ENOSPC, "No space left on device"))
    assert wire(refusal) == b"451 4.3.0 Error: cannot write the message: No space left on device\r\n"


def test_a_temporary_lookup_failure_is_451_and_names_the_address():
    refusal = refusals.temporary_lookup_failure("bob@example.com")
    assert wire(refusal) == b"451 4.3.0 <bob@example.com>: Temporary lookup failure\r\n"
    assert refusal.action == DEFER


def test_an_unknown_restriction_is_a_server_configuration_error_with_a_warning():
    refusal = refusals.server_configuration_error("permit_mynetwork")
    assert wire(refusal) == b"451 4.3.5 Server configuration error\r\n"
    assert refusal.warning == 'unknown smtpd restriction: "permit_mynetwork"'


def test_session_refusals_of_the_application():
    assert wire(refusals.STARTTLS_REQUIRED) == b"530 5.7.0 Must issue a STARTTLS command first\r\n"
    assert wire(refusals.TLS_UNAVAILABLE) == b"454 4.7.0 TLS not available due to local problem\r\n"
    assert wire(refusals.TLS_UNAVAILABLE_ON_STDIN) == b"454 4.7.0 TLS not available on standard input\r\n"


def test_an_unknown_virtual_alias_is_postfixs_550_5_1_1():
    # smtpd_check.c check_rcpt_maps, with trivial-rewrite's "User unknown in virtual alias table".
    refusal = refusals.unknown_virtual_alias(550, "nobody@virtual.example")
    assert wire(refusal) == (b"550 5.1.1 <nobody@virtual.example>: Recipient address rejected: "
                             b"User unknown in virtual alias table\r\n")
    assert refusal.action == REJECT


def test_unknown_virtual_alias_reject_code_450_is_a_deferral():
    refusal = refusals.unknown_virtual_alias(450, "nobody@virtual.example")
    assert wire(refusal).startswith(b"450 5.1.1 <nobody@virtual.example>:")
    assert refusal.action == DEFER


def test_a_rewrite_failure_in_cleanup_is_the_451_smtpd_gives_for_it():
    assert wire(refusals.rewrite_failure("4.3.0", "Error: queue file write error", "lookup")) == \
        b"451 4.3.0 Error: queue file write error\r\n"
    assert wire(refusals.rewrite_failure("4.6.0", "Alias expansion error", "limit")) == \
        b"451 4.6.0 Alias expansion error\r\n"
