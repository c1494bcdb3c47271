"""`mailferry mailq`: Postfix's mailq listing; 75 (as Postfix's mailq, which is its sendmail)
when the queue cannot be read."""

from tests.unit.local.queue_fixtures import add_message, make_instance, open_store


def test_lists_the_queue(tmp_path, mailferry):
    config_dir, queue_directory = make_instance(tmp_path)
    store = open_store("sqlite", queue_directory)
    queue_id = add_message(store, sender="", reasons={"bob@example.net": "Mailbox full"})
    store.close()
    result = mailferry("mailq", config_dir=config_dir)
    assert result.code == 0, result.err
    lines = result.out.splitlines()
    assert lines[0] == "-Queue ID-  --Size-- ----Arrival Time---- -Sender/Recipient-------"
    assert lines[1].startswith(queue_id) and lines[1].endswith("  MAILER-DAEMON")
    assert lines[2] == "(Mailbox full)".rjust(78)
    assert lines[3] == " " * 41 + "bob@example.net"
    assert lines[4:] == ["", "-- 0 Kbytes in 1 Request."]


def test_empty(tmp_path, mailferry):
    config_dir, _ = make_instance(tmp_path)
    result = mailferry("mailq", config_dir=config_dir)
    assert (result.code, result.out) == (0, "Mail queue is empty\n")


def test_config_dir_option_as_sendmail_takes_it(tmp_path, mailferry):
    config_dir, _ = make_instance(tmp_path)
    result = mailferry("mailq", "-C", config_dir, config_dir=tmp_path / "elsewhere")
    assert (result.code, result.out) == (0, "Mail queue is empty\n")


def test_missing_queue_directory_exits_75(tmp_path, mailferry):
    config_dir, queue_directory = make_instance(tmp_path)
    queue_directory.rmdir()
    result = mailferry("mailq", config_dir=config_dir)
    assert result.code == 75
    assert f"mailferry/mailq: fatal: chdir {queue_directory}: No such file or directory" in result.err


def test_arguments_are_refused(tmp_path, mailferry):
    config_dir, _ = make_instance(tmp_path)
    result = mailferry("mailq", "bob@example.net", config_dir=config_dir)
    assert result.code == 75 and "display queue mode requires no recipient" in result.err
