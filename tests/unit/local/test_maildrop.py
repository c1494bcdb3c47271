import json
import os
import stat

import pytest

from mailferry.local import maildrop
from mailferry.local.maildrop import (CorruptMaildropFile, MaildropEnvelope, UnsupportedMaildropVersion,
                                      ensure_maildrop_directory, read_maildrop, write_maildrop)


def envelope(**changes):
    fields = dict(sender="alice", recipients=["bob@example.net", "Carol <carol@example.net>"], uid=1000,
                  arrival_time=1_795_574_036.25, extract_recipients=True, full_name="Alice Ä. Example",
                  dsn_notify="SUCCESS,DELAY", dsn_ret="HDRS", dsn_envid="env-1", body_type="8BITMIME")
    fields.update(changes)
    return MaildropEnvelope(**fields)


@pytest.fixture
def queue_directory(tmp_path):
    ensure_maildrop_directory(str(tmp_path))
    return str(tmp_path)


def test_directory_is_made_sticky_and_unlistable(tmp_path):
    old = os.umask(0o077)
    try:
        directory = ensure_maildrop_directory(str(tmp_path))
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(directory).st_mode) == 0o1733
    assert ensure_maildrop_directory(str(tmp_path)) == directory  # already there: fine


def test_round_trip_keeps_envelope_and_bytes(queue_directory):
    message = b"Subject: x\n\nbody \xff\r\nwith CRLF\r\n.\n"
    path = write_maildrop(queue_directory, envelope(), message)
    entry = read_maildrop(path)
    assert entry.envelope == envelope()
    assert entry.content == message
    assert entry.owner_uid == os.getuid()
    assert entry.file_size == os.path.getsize(path)


def test_null_sender_and_absent_sender_differ(queue_directory):
    null = read_maildrop(write_maildrop(queue_directory, envelope(sender=""), b"x\n"))
    absent = read_maildrop(write_maildrop(queue_directory, envelope(sender=None), b"x\n"))
    assert null.envelope.sender == ""
    assert absent.envelope.sender is None


def test_undecodable_argument_bytes_survive(queue_directory):
    odd = os.fsdecode(b"caf\xe9@example.net")  # surrogate-escaped, as argv gives it
    entry = read_maildrop(write_maildrop(queue_directory, envelope(recipients=[odd]), b"x\n"))
    assert entry.envelope.recipients == [odd]


def test_layout_is_versioned_text_then_message(queue_directory):
    path = write_maildrop(queue_directory, envelope(), b"Subject: x\n\nbody\n")
    with open(path, "rb") as handle:
        data = handle.read()
    version, fields, message = data.split(b"\n", 2)
    assert version == b"mailferry-maildrop 1"
    assert json.loads(fields)["content_length"] == len(message) == len(b"Subject: x\n\nbody\n")
    assert message == b"Subject: x\n\nbody\n"


def test_file_is_readable_by_the_daemon_whatever_the_umask(queue_directory):
    old = os.umask(0o077)
    try:
        path = write_maildrop(queue_directory, envelope(), b"x\n")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644


def test_final_name_looks_like_a_queue_id_and_is_unique(queue_directory):
    names = {os.path.basename(write_maildrop(queue_directory, envelope(), b"x\n")) for _ in range(50)}
    assert len(names) == 50
    assert all(name.isalnum() and name == name.upper() for name in names)


def test_no_partial_file_is_ever_visible_under_a_final_name(queue_directory, monkeypatch):
    """The write fails half-way: nothing is left, neither final nor temporary."""
    real_write = os.write

    def fail_after_some_bytes(descriptor, data):
        real_write(descriptor, bytes(data[:10]))
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(maildrop.os, "write", fail_after_some_bytes)
    with pytest.raises(OSError):
        write_maildrop(queue_directory, envelope(), b"x" * 10_000)
    monkeypatch.undo()
    assert os.listdir(maildrop.maildrop_directory(queue_directory)) == []


def test_data_is_complete_before_the_final_name_appears(queue_directory, monkeypatch):
    """At the moment of the rename the temporary file is already whole and synced."""
    seen = {}
    real_rename = os.rename

    def checking_rename(source, target):
        seen["temporary"] = os.path.basename(source)
        seen["final_existed"] = os.path.exists(target)
        seen["decodes"] = read_maildrop(source).content == b"y" * 100_000
        real_rename(source, target)

    monkeypatch.setattr(maildrop.os, "rename", checking_rename)
    write_maildrop(queue_directory, envelope(), b"y" * 100_000)
    assert seen == {"temporary": seen["temporary"], "final_existed": False, "decodes": True}
    assert seen["temporary"].startswith(".")


def write_raw(queue_directory, data, name="ABCDE123"):
    path = os.path.join(maildrop.maildrop_directory(queue_directory), name)
    with open(path, "wb") as handle:
        handle.write(data)
    return path


@pytest.mark.parametrize("data, complaint", [
    (b"", "not a mailferry maildrop file"),
    (b"From alice Mon Nov 24\nSubject: x\n", "not a mailferry maildrop file"),
    (b"mailferry-maildrop x\n{}\n", "bad version line"),
    (b"mailferry-maildrop 1\n", "truncated envelope"),
    (b"mailferry-maildrop 1\n{not json\nbody", "bad envelope"),
    (b"mailferry-maildrop 1\n[1, 2]\nbody", "not an object"),
    (b'mailferry-maildrop 1\n{"recipients": "bob", "uid": 0, "arrival_time": 1, '
     b'"extract_recipients": false, "content_length": 0}\n', "recipients must be a list"),
    (b'mailferry-maildrop 1\n{"recipients": [], "uid": "0", "arrival_time": 1, '
     b'"extract_recipients": false, "content_length": 0}\n', "uid must be an integer"),
    (b'mailferry-maildrop 1\n{"recipients": [], "uid": 0, "arrival_time": 1, "sender": 5, '
     b'"extract_recipients": false, "content_length": 0}\n', "sender must be a string"),
])
def test_corrupt_files_are_recognised(queue_directory, data, complaint):
    with pytest.raises(CorruptMaildropFile, match=complaint):
        read_maildrop(write_raw(queue_directory, data))


def test_truncated_message_is_corrupt(queue_directory):
    path = write_maildrop(queue_directory, envelope(), b"Subject: x\n\nlong body\n")
    with open(path, "r+b") as handle:
        handle.truncate(os.path.getsize(path) - 5)
    with pytest.raises(CorruptMaildropFile, match="the envelope says"):
        read_maildrop(path)


def test_newer_version_is_left_for_a_newer_mailferry(queue_directory):
    path = write_raw(queue_directory, b"mailferry-maildrop 2\n{}\n")
    with pytest.raises(UnsupportedMaildropVersion, match="version 2"):
        read_maildrop(path)


def test_symlink_fifo_and_hard_link_are_refused(queue_directory, tmp_path):
    secret = tmp_path / "secret"
    secret.write_bytes(maildrop.encode(envelope(), b"private\n"))
    directory = maildrop.maildrop_directory(queue_directory)
    os.symlink(secret, os.path.join(directory, "LINK1"))
    os.mkfifo(os.path.join(directory, "FIFO1"))
    os.link(secret, os.path.join(directory, "HARD1"))
    for name, complaint in (("LINK1", "not a regular file"), ("FIFO1", "not a regular file"),
                            ("HARD1", "2 hard links")):
        with pytest.raises(CorruptMaildropFile, match=complaint):
            read_maildrop(os.path.join(directory, name))
