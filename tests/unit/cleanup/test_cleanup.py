"""cleanup(8)'s work on a message before it enters the queue.

The expectations come from Postfix:
- smtpd.c writes the Received: header of SMTP mail:
      Received: from HELO (NAME [ADDR])
      \t(using TLS...)                          only with smtpd_tls_received_header = yes
      \tby MYHOSTNAME (MAIL_NAME) with PROTO id QUEUEID
      \tfor <RCPT>; DATE                        exactly one recipient
  or, with any other number of recipients,
      \tby MYHOSTNAME (MAIL_NAME) with PROTO id QUEUEID;
      \tDATE
- pickup.c writes that of local submissions:
      Received: by MYHOSTNAME (MAIL_NAME, from userid UID)
      \tid QUEUEID; DATE                        never a `for` clause
- postconf(5) always_add_missing_headers: "Always add (Resent-) From:, To:,
  Date: or Message-ID: headers when not present. Postfix 2.6 and later add
  these headers only when clients match the local_header_rewrite_clients
  parameter setting." (`add_missing_headers` below is that decision.)
- cleanup_message.c: a missing Message-Id is `<YYYYMMDDHHMMSS.QUEUEID@myhostname>`
  (UTC time) for short queue IDs; a missing From: is `From: sender`,
  `From: phrase <sender>` with a full name, or `From: MAILER-DAEMON` for the
  null sender.
"""

import time
from email import message_from_bytes
from email.utils import parsedate_to_datetime

from mailferry.cleanup.cleanup import CleanupSettings, clean, qualify
from mailferry.message import ClientInfo, NewMessage, Recipient

SETTINGS = CleanupSettings(myhostname="mx.example.com", myorigin="example.com")
QUEUE_ID = "6C8A2F41B3D7"
NOW = 1_730_775_845.25  # 2024-11-05 03:04:05.25 UTC
REMOTE = ClientInfo(name="mail.example.net", address="192.0.2.10", helo="helo.example.net",
                    protocol="ESMTP")
TLS = "TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits)"


def smtp_message(content=b"Subject: hello\r\n\r\nbody\r\n", recipients=("bob@example.org",),
                 sender="alice@example.net", client=REMOTE):
    return NewMessage(sender=sender, recipients=[Recipient(r) for r in recipients],
                      content=content, client=client, origin="smtp")


def local_message(content=b"Subject: hello\r\n\r\nbody\r\n", recipients=("bob@example.org",),
                  sender="alice", uid=1000):
    return NewMessage(sender=sender, recipients=[Recipient(r) for r in recipients], content=content,
                      client=ClientInfo(protocol="local", uid=uid), origin="local")


def cleaned(message, add_missing_headers=False, settings=SETTINGS, full_name=""):
    return clean(message, QUEUE_ID, settings, add_missing_headers, full_name, now=NOW)


def header_section(content: bytes) -> bytes:
    return content.split(b"\r\n\r\n", 1)[0] + b"\r\n"


def fields(content: bytes) -> list[bytes]:
    """The header fields, each with its continuation lines, in order."""
    result: list[bytes] = []
    for line in header_section(content).split(b"\r\n")[:-1]:
        if line[:1] in (b" ", b"\t") and result:
            result[-1] += b"\r\n" + line
        else:
            result.append(line)
    return result


def named(content: bytes, name: bytes) -> list[bytes]:
    return [field for field in fields(content) if field.split(b":", 1)[0].lower() == name.lower()]


def received(content: bytes) -> str:
    [header] = named(content, b"Received")
    return header.decode()


def split_date(header: str) -> tuple[str, float]:
    """(everything before the date, the date as a timestamp)."""
    before, _, date = header.rpartition(";")
    return before, parsedate_to_datetime(date.strip()).timestamp()


# --- qualify: append_at_myorigin


def test_a_bare_address_gets_at_myorigin():
    assert qualify("alice", SETTINGS) == "alice@example.com"


def test_a_qualified_address_is_left_alone():
    assert qualify("alice@example.net", SETTINGS) == "alice@example.net"


def test_the_null_sender_stays_null():
    assert qualify("", SETTINGS) == ""


def test_append_at_myorigin_off_leaves_a_bare_address_bare():
    settings = CleanupSettings(myhostname="mx.example.com", myorigin="example.com",
                               append_at_myorigin=False)
    assert qualify("alice", settings) == "alice"


def test_clean_qualifies_the_envelope_sender_and_every_recipient():
    message = cleaned(local_message(sender="alice", recipients=("bob", "carol@example.org")))
    assert message.sender == "alice@example.com"
    assert [r.address for r in message.recipients] == ["bob@example.com", "carol@example.org"]


def test_clean_keeps_the_null_sender():
    assert cleaned(smtp_message(sender="")).sender == ""


# --- Received: for SMTP mail


def test_received_for_one_recipient_has_the_for_clause():
    message = cleaned(smtp_message())
    before, date = split_date(received(message.content))
    assert before == ("Received: from helo.example.net (mail.example.net [192.0.2.10])\r\n"
                      f"\tby mx.example.com (mailferry) with ESMTP id {QUEUE_ID}\r\n"
                      "\tfor <bob@example.org>")
    assert date == int(NOW)


def test_received_is_the_first_header_and_the_original_headers_follow_unchanged():
    message = cleaned(smtp_message(content=b"Subject: hello\r\nTo: bob@example.org\r\n\r\nbody\r\n"))
    assert message.content.startswith(b"Received: from helo.example.net ")
    assert message.content.endswith(b"Subject: hello\r\nTo: bob@example.org\r\n\r\nbody\r\n")


def test_received_without_helo_names_the_client_twice_as_postfix_does():
    client = ClientInfo(name="mail.example.net", address="192.0.2.10", helo="", protocol="SMTP")
    header = received(cleaned(smtp_message(client=client)).content)
    assert header.startswith("Received: from mail.example.net (mail.example.net [192.0.2.10])\r\n"
                             f"\tby mx.example.com (mailferry) with SMTP id {QUEUE_ID}\r\n")


def test_received_names_the_protocol_and_the_mail_name():
    client = ClientInfo(name="unknown", address="2001:db8::7", helo="laptop", protocol="ESMTPSA")
    settings = CleanupSettings(myhostname="relay.example.com", myorigin="example.com",
                               mail_name="Ferry")
    header = received(cleaned(smtp_message(client=client), settings=settings).content)
    assert header.startswith("Received: from laptop (unknown [2001:db8::7])\r\n"
                             f"\tby relay.example.com (Ferry) with ESMTPSA id {QUEUE_ID}\r\n")


def test_received_has_no_for_clause_with_two_recipients():
    message = cleaned(smtp_message(recipients=("bob@example.org", "carol@example.org")))
    header = received(message.content)
    assert "for <" not in header
    assert f"\tby mx.example.com (mailferry) with ESMTP id {QUEUE_ID}" in header
    assert split_date(header)[1] == int(NOW)


def test_received_with_two_recipients_puts_the_date_on_its_own_line_as_postfix_does():
    # smtpd.c: "\tby %s (%s) with %s id %s;" then "\t%s" (the date).
    header = received(cleaned(smtp_message(recipients=("bob@example.org", "carol@example.org"))).content)
    lines = header.split("\r\n")
    assert lines[1] == f"\tby mx.example.com (mailferry) with ESMTP id {QUEUE_ID};"
    assert parsedate_to_datetime(lines[2].strip()).timestamp() == int(NOW)


def test_received_names_the_tls_session_when_tls_received_header_is_on():
    settings = CleanupSettings(myhostname="mx.example.com", myorigin="example.com",
                               tls_received_header=True)
    client = ClientInfo(name="mail.example.net", address="192.0.2.10", helo="helo.example.net",
                        protocol="ESMTPS", tls=TLS)
    lines = received(cleaned(smtp_message(client=client), settings=settings).content).split("\r\n")
    assert lines[0] == "Received: from helo.example.net (mail.example.net [192.0.2.10])"
    assert lines[1] == f"\t(using {TLS})"
    assert lines[2] == f"\tby mx.example.com (mailferry) with ESMTPS id {QUEUE_ID}"


def test_no_tls_line_when_tls_received_header_is_off():
    client = ClientInfo(name="mail.example.net", address="192.0.2.10", helo="helo.example.net",
                        protocol="ESMTPS", tls=TLS)
    header = received(cleaned(smtp_message(client=client)).content)
    assert "using" not in header
    assert header.split("\r\n")[1].startswith("\tby mx.example.com ")


def test_no_tls_line_for_a_client_without_tls_even_when_the_setting_is_on():
    settings = CleanupSettings(myhostname="mx.example.com", myorigin="example.com",
                               tls_received_header=True)
    header = received(cleaned(smtp_message(), settings=settings).content)
    assert "using" not in header


# --- Received: for local submissions (pickup)


def test_received_of_a_local_submission_names_the_userid_and_no_recipient():
    # pickup.c: "Received: by %s (%s, from userid %ld)" then "\tid %s; %s", whatever the recipients.
    message = cleaned(local_message(uid=1000))
    before, date = split_date(received(message.content))
    assert before == f"Received: by mx.example.com (mailferry, from userid 1000)\r\n\tid {QUEUE_ID}"
    assert date == int(NOW)


def test_received_of_a_local_submission_to_two_recipients():
    message = cleaned(local_message(uid=0, recipients=("bob@example.org", "carol@example.org")))
    before, date = split_date(received(message.content))
    assert before == f"Received: by mx.example.com (mailferry, from userid 0)\r\n\tid {QUEUE_ID}"
    assert date == int(NOW)


# --- Message-ID:, Date:, From:


def test_missing_message_id_and_date_are_added_for_a_local_header_rewrite_client():
    message = cleaned(smtp_message(), add_missing_headers=True)
    stamp = time.strftime("%Y%m%d%H%M%S", time.gmtime(NOW))
    expected_id = f"<{stamp}.{QUEUE_ID}@mx.example.com>"
    [message_id] = named(message.content, b"Message-ID")
    assert message_id.split(b":", 1)[1].strip().decode() == expected_id
    assert message.message_id == expected_id
    [date] = named(message.content, b"Date")
    assert parsedate_to_datetime(date.split(b":", 1)[1].strip().decode()).timestamp() == int(NOW)


def test_nothing_is_added_for_a_remote_client():
    message = cleaned(smtp_message(content=b"Subject: hello\r\n\r\nbody\r\n"), add_missing_headers=False)
    assert [f.split(b":", 1)[0] for f in fields(message.content)] == [b"Received", b"Subject"]


def test_present_headers_are_recognised_whatever_their_case():
    content = b"MESSAGE-ID: <abc@example.net>\r\ndate: Tue, 5 Nov 2024 03:00:00 +0000\r\nfRoM: a@example.net\r\n\r\nbody\r\n"
    message = cleaned(local_message(content=content), add_missing_headers=True)
    assert len(named(message.content, b"Message-ID")) == 1
    assert len(named(message.content, b"Date")) == 1
    assert len(named(message.content, b"From")) == 1
    assert message.message_id == "<abc@example.net>"


def test_header_lookalikes_in_the_body_do_not_count_as_present():
    content = (b"Subject: hello\r\n\r\n"
               b"Message-ID: <fake@example.net>\r\nDate: yesterday\r\nFrom: someone@example.net\r\n")
    message = cleaned(local_message(content=content), add_missing_headers=True)
    assert len(named(message.content, b"Message-ID")) == 1
    assert len(named(message.content, b"Date")) == 1
    assert named(message.content, b"From") == [b"From: alice@example.com"]
    assert message.message_id != "<fake@example.net>"
    assert message.content.endswith(content.split(b"\r\n\r\n", 1)[1])


def test_from_is_added_to_a_local_submission_with_the_qualified_sender():
    message = cleaned(local_message(sender="alice"), add_missing_headers=True)
    assert named(message.content, b"From") == [b"From: alice@example.com"]


def test_from_is_added_for_a_local_header_rewrite_client_too():
    # postconf(5) always_add_missing_headers: (Resent-) From: is added under the same
    # condition as Message-ID: and Date: (cleanup_message.c tests hdr_rewrite_context for all three).
    message = cleaned(smtp_message(sender="alice@example.net"), add_missing_headers=True)
    assert named(message.content, b"From") == [b"From: alice@example.net"]


def test_from_is_not_added_for_a_remote_client():
    message = cleaned(smtp_message(), add_missing_headers=False)
    assert named(message.content, b"From") == []


def test_from_carries_a_plain_full_name_as_a_phrase():
    message = cleaned(local_message(), add_missing_headers=True, full_name="Alice Smith")
    assert named(message.content, b"From") == [b"From: Alice Smith <alice@example.com>"]


def test_a_full_name_with_specials_is_quoted():
    # "." is an RFC 5322 special: a phrase containing it must be a quoted string.
    message = cleaned(local_message(), add_missing_headers=True, full_name="Alice A. Smith")
    assert named(message.content, b"From") == [b'From: "Alice A. Smith" <alice@example.com>']


def test_quotes_and_backslashes_in_a_full_name_are_escaped():
    message = cleaned(local_message(), add_missing_headers=True, full_name='Al "the pal" \\ Smith')
    assert named(message.content, b"From") == [b'From: "Al \\"the pal\\" \\\\ Smith" <alice@example.com>']


def test_from_of_the_null_sender_is_mailer_daemon_without_a_full_name():
    message = cleaned(local_message(sender=""), add_missing_headers=True, full_name="Alice Smith")
    assert named(message.content, b"From") == [b"From: MAILER-DAEMON"]


def test_an_existing_from_is_kept_for_a_local_submission():
    content = b"From: Alice <alice@example.net>\r\nSubject: s\r\n\r\nbody\r\n"
    message = cleaned(local_message(content=content), add_missing_headers=True, full_name="Other")
    assert named(message.content, b"From") == [b"From: Alice <alice@example.net>"]


# --- a message with no header section


def test_a_message_without_headers_keeps_its_body_a_body():
    body = b"just a line of text\r\nand another\r\n"
    message = cleaned(smtp_message(content=body))
    parsed = message_from_bytes(message.content)
    assert parsed.keys() == ["Received"]
    assert parsed.get_payload().encode() == body
    assert message.content.endswith(b"\r\n\r\n" + body)


def test_a_message_without_headers_gets_its_added_headers_and_still_its_body():
    body = b"just a line of text\r\n"
    message = cleaned(local_message(content=body), add_missing_headers=True)
    parsed = message_from_bytes(message.content)
    assert sorted(parsed.keys()) == ["Date", "From", "Message-Id", "Received"]
    assert parsed.get_payload().encode() == body


def test_an_empty_header_section_gets_no_second_blank_line():
    content = b"\r\nbody after an empty header section\r\n"
    message = cleaned(smtp_message(content=content))
    assert message.content == received(message.content).encode() + b"\r\n" + content


def test_a_header_only_message_stays_header_only():
    message = cleaned(smtp_message(content=b"Subject: nothing else\r\n"))
    assert message.content.endswith(b"\r\nSubject: nothing else\r\n")
    assert b"\r\n\r\n" not in message.content


# --- the message ID that is logged


def test_the_message_id_is_read_from_an_existing_header():
    content = b"Subject: s\r\nMessage-ID: <abc.123@example.net>\r\n\r\nbody\r\n"
    assert cleaned(smtp_message(content=content)).message_id == "<abc.123@example.net>"


def test_a_folded_message_id_is_read_unfolded():
    # Postfix logs the header value with the folding whitespace skipped.
    content = b"Subject: s\r\nMessage-ID:\r\n <abc.123@example.net>\r\n\r\nbody\r\n"
    assert cleaned(smtp_message(content=content)).message_id == "<abc.123@example.net>"


def test_a_message_id_line_in_a_headerless_body_is_not_the_message_id():
    body = b"hello there\r\nMessage-ID: <fake@example.net>\r\n"
    message = cleaned(smtp_message(content=body))
    assert message.message_id == ""


def test_no_message_id_when_there_is_none_and_none_may_be_added():
    assert cleaned(smtp_message()).message_id == ""


# --- arrival time


def test_arrival_time_is_set_when_missing_and_kept_when_given():
    assert cleaned(smtp_message()).arrival_time == NOW
    given = smtp_message()
    given.arrival_time = 1_700_000_000.0
    assert cleaned(given).arrival_time == 1_700_000_000.0
