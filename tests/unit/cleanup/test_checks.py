"""cleanup/checks.py inside CleanupService.enqueue: the checks see the message as received
(not the headers cleanup adds), a REJECT queues nothing, HOLD, DISCARD and BCC reach the
queue, and receive_override_options turns steps off for one service's mail."""

from __future__ import annotations

import asyncio

import pytest

from mailferry.cleanup.checks import ContentChecks
from mailferry.cleanup.cleanup import CleanupSettings
from mailferry.cleanup.rewrite import AddressRewriter
from mailferry.cleanup.service import CleanupService, ContentRefused
from mailferry.config.config import Config
from mailferry.config.maincf import parse_main_cf
from mailferry.message import HOLD, ClientInfo, NewMessage, Recipient
from mailferry.queue import GroupCommitter, RamQueueStore
from tests.unit.listlog import ListLog

SETTINGS = CleanupSettings(myhostname="mx.example.com", myorigin="example.com")
LOCAL = ClientInfo(name="localhost", address="127.0.0.1", helo="me")


def enqueue(tmp_path, header_checks: str, message: NewMessage, main_cf: str = ""):
    (tmp_path / "header_checks").write_text(header_checks)
    config = Config(str(tmp_path), parse_main_cf(f"header_checks = regexp:{tmp_path}/header_checks\n{main_cf}",
                                                 str(tmp_path / "main.cf")))
    store, log = RamQueueStore(), ListLog()

    async def run():
        committer = GroupCommitter(store)
        service = CleanupService(SETTINGS, committer, log, lambda address: True, lambda: None,
                                 AddressRewriter.from_config(config), ContentChecks.from_config(config, log))
        try:
            return await service.enqueue(message, "4F00BA5", "")
        finally:
            await committer.close()
    return asyncio.run(run()), store, log


def message(content: bytes = b"Subject: hello\r\n\r\nbody\r\n", **fields) -> NewMessage:
    return NewMessage("alice@example.net", [Recipient("bob@example.org")], content, LOCAL, **fields)


def test_headers_cleanup_adds_itself_are_not_checked_but_its_received_is(tmp_path):
    # Message-Id:, Date: and From: are cleanup's (Postfix adds them after its checks); a table
    # that rejects them must not refuse a message that came without them.
    _, store, _ = enqueue(tmp_path, "/^(Message-Id|Date|From):/ REJECT\n", message())
    assert store.get("4F00BA5") is not None
    with pytest.raises(ContentRefused):
        enqueue(tmp_path, "/^Received: from me /  REJECT\n", message())


def test_a_reject_queues_nothing(tmp_path):
    with pytest.raises(ContentRefused) as refused:
        enqueue(tmp_path, "/^Subject: hello/ REJECT 5.7.1 no\n", message())
    assert refused.value.refusal.reply.code == 550


def test_hold_discard_and_bcc_reach_the_queue(tmp_path):
    _, store, _ = enqueue(tmp_path, "/^Subject: hello/ HOLD\n", message())
    assert store.get("4F00BA5").queue == HOLD
    _, store, log = enqueue(tmp_path, "/^Subject: hello/ DISCARD\n", message())
    assert store.get("4F00BA5") is None
    assert [text for _, text in log.lines if "discard:" in text] == [
        "4F00BA5: discard: header Subject: hello from localhost[127.0.0.1]; from=<alice@example.net> "
        "to=<bob@example.org> proto=ESMTP helo=<me>"]
    _, store, _ = enqueue(tmp_path, "/^Subject: hello/ BCC archive@example.org\n", message())
    recipients = store.get("4F00BA5").recipients
    assert [(r.address, r.notify) for r in recipients] == [("bob@example.org", None), ("archive@example.org", "NEVER")]


def test_no_header_body_checks_skips_them(tmp_path):
    _, store, _ = enqueue(tmp_path, "/^Subject: hello/ REJECT\n",
                          message(receive_overrides=frozenset({"no_header_body_checks"})))
    assert store.get("4F00BA5") is not None


def test_no_address_mappings_skips_canonical_and_virtual_rewriting(tmp_path):
    maps = "virtual_alias_maps = inline:{ bob@example.org=robert@example.org }\n"
    _, store, _ = enqueue(tmp_path, "", message(), maps)
    assert [r.address for r in store.get("4F00BA5").recipients] == ["robert@example.org"]
    _, store, _ = enqueue(tmp_path, "", message(receive_overrides=frozenset({"no_address_mappings"})), maps)
    assert [r.address for r in store.get("4F00BA5").recipients] == ["bob@example.org"]


def test_no_checks_configured_means_nothing_is_parsed(tmp_path):
    config = Config(str(tmp_path), parse_main_cf("", str(tmp_path / "main.cf")))
    checks = ContentChecks.from_config(config, ListLog())
    assert not checks.active


def test_strict_mime_encoding_domain_rejects_as_postfix_3_7_does(tmp_path):
    """Reply and log line as real Postfix 3.7.11 gave them for this message (checked by hand)."""
    content = (b"Subject: t\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n"
               b"Content-Transfer-Encoding: base64\r\n\r\n--b\r\n\r\nx\r\n--b--\r\n")
    with pytest.raises(ContentRefused) as refused:
        enqueue(tmp_path, "", NewMessage("s@x.test", [Recipient("r@dest.test")], content, LOCAL),
                "strict_mime_encoding_domain = yes\n")
    reply = refused.value.refusal.reply
    assert (reply.code, reply.enhanced, reply.text) == (550, "5.6.0", "invalid message/* or multipart/* encoding domain")


def test_the_mime_error_log_line(tmp_path):
    content = b"Content-Type: multipart/mixed; boundary=b\r\nContent-Transfer-Encoding: base64\r\n\r\n--b--\r\n"
    log = ListLog()
    config = Config(str(tmp_path), parse_main_cf("strict_mime_encoding_domain = yes\n", str(tmp_path / "main.cf")))
    checks = ContentChecks.from_config(config, log)
    with pytest.raises(ContentRefused):
        asyncio.run(checks.apply(NewMessage("s@x.test", [Recipient("r@dest.test")], content, LOCAL,
                                            queue_id="49C1021E3DF")))
    assert log.texts() == ["49C1021E3DF: reject: mime-error invalid message/* or multipart/* encoding domain: "
                           "base64 from localhost[127.0.0.1]; from=<s@x.test> to=<r@dest.test>"]


def test_a_checks_table_that_fails_for_now_refuses_with_451_never_an_accept():
    from mailferry.content.checks import CheckTables, Limits
    from mailferry.tables import tempfail

    class Down:
        async def lookup(self, key):
            return tempfail("ldap server down")

    log = ListLog()
    checks = ContentChecks(CheckTables(header=Down()), Limits(), log)
    with pytest.raises(ContentRefused) as refused:
        asyncio.run(checks.apply(message(queue_id="4F00BA5")))
    reply = refused.value.refusal.reply
    assert (reply.code, reply.enhanced, reply.text) == (451, "4.3.0", "Error: queue file write error")
    assert log.texts() == ["warning: 4F00BA5: header_checks map lookup problem -- message not accepted, "
                           "try again later"]


def enqueue_without_checks(tmp_path, message: NewMessage, main_cf: str = ""):
    config = Config(str(tmp_path), parse_main_cf(main_cf, str(tmp_path / "main.cf")))
    store, log = RamQueueStore(), ListLog()

    async def run():
        committer = GroupCommitter(store)
        checks = ContentChecks.from_config(config, log)
        assert not checks.active
        service = CleanupService(SETTINGS, committer, log, lambda address: True, lambda: None,
                                 AddressRewriter.from_config(config), checks)
        try:
            return await service.enqueue(message, "4F00BA5", "")
        finally:
            await committer.close()
    return asyncio.run(run()), store


def test_header_size_limit_cuts_a_long_header_with_no_checks_configured(tmp_path):
    # Postfix's cleanup keeps every header within header_size_limit whether or not any
    # header_checks exist; the lines past the limit are dropped, the body is kept.
    long_header = b"X-Long: start" + b"".join(b"\r\n " + b"y" * 70 for _ in range(100))
    content = b"Subject: hi\r\n" + long_header + b"\r\nTo: bob@example.org\r\n\r\nthe body\r\n"
    _, store = enqueue_without_checks(tmp_path, message(content), "header_size_limit = 1000\n")
    stored = store.content("4F00BA5")
    x_long = stored[stored.index(b"X-Long:"):stored.index(b"\r\nTo:")]
    assert len(x_long) <= 1000 and x_long.startswith(b"X-Long: start\r\n y")
    assert stored.endswith(b"\r\nTo: bob@example.org\r\n\r\nthe body\r\n")


def test_headers_within_the_limit_are_stored_as_received_with_no_checks(tmp_path):
    content = b"Subject: hi\r\nX-Long: " + b"y" * 900 + b"\r\n\r\n" + b"z" * 5000 + b"\r\n"
    _, store = enqueue_without_checks(tmp_path, message(content), "header_size_limit = 1000\n")
    assert store.content("4F00BA5").endswith(content)
