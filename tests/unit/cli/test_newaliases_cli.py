"""`mailferry newaliases` and `mailferry-sendmail -bi`: alias_database built from aliases(5)."""

import subprocess
import sys

from mailferry.tables import open_table


def config(tmp_path, alias_database):
    (tmp_path / "main.cf").write_text(f"alias_database = {alias_database}\n")
    return tmp_path


def test_builds_every_alias_database_table(tmp_path, mailferry):
    (tmp_path / "aliases").write_text("postmaster: root\nstaff: alice,\n  bob\n")
    (tmp_path / "more").write_text("help: staff\n")
    config(tmp_path, f"hash:{tmp_path}/aliases, lmdb:{tmp_path}/more")
    result = mailferry("newaliases", config_dir=tmp_path)
    assert result.code == 0, result.err
    assert open_table(f"hash:{tmp_path}/aliases").lookup_now("staff").value == "alice,\n  bob"
    assert open_table(f"lmdb:{tmp_path}/more").lookup_now("HELP").value == "staff"


def test_named_table_and_bad_line_warning(tmp_path, mailferry):
    (tmp_path / "aliases").write_text("good: a\nno colon here\n")
    config(tmp_path, "hash:/nonexistent/aliases")
    result = mailferry("newaliases", f"hash:{tmp_path}/aliases", config_dir=tmp_path)
    assert result.code == 0
    assert f"{tmp_path}/aliases, line 2: need name:value pair" in result.err
    assert open_table(f"hash:{tmp_path}/aliases").lookup_now("good").value == "a"


def test_missing_source_fails_and_says_which(tmp_path, mailferry):
    config(tmp_path, f"hash:{tmp_path}/absent")
    result = mailferry("newaliases", config_dir=tmp_path)
    assert result.code == 1
    assert f"{tmp_path}/absent" in result.err and "no such file" in result.err


def test_texthash_is_checked_not_built(tmp_path, mailferry):
    (tmp_path / "aliases").write_text("a: b\nbroken\n")
    config(tmp_path, f"texthash:{tmp_path}/aliases")
    result = mailferry("newaliases", config_dir=tmp_path)
    assert result.code == 0
    assert "line 2" in result.err
    assert not (tmp_path / "aliases.db").exists()


def test_sendmail_bi_and_I_build_the_alias_database(tmp_path):
    (tmp_path / "aliases").write_text("postmaster: root\n")
    config(tmp_path, f"hash:{tmp_path}/aliases")
    for option in ("-bi", "-I"):
        (tmp_path / "aliases.db").unlink(missing_ok=True)
        completed = subprocess.run([sys.executable, "-c", "import sys; from mailferry.cli.sendmail import main; "
                                    "sys.exit(main(sys.argv[1:]))", "-C", str(tmp_path), option],
                                   capture_output=True, text=True, timeout=60)
        assert completed.returncode == 0, completed.stderr
        assert open_table(f"hash:{tmp_path}/aliases").lookup_now("postmaster").value == "root"


def test_replacing_a_foreign_index_is_said(tmp_path, mailferry):
    (tmp_path / "aliases").write_text("postmaster: root\n")
    (tmp_path / "aliases.db").write_bytes(b"\0" * 12 + b"\x61\x15\x06\x00" + b"\0" * 4080)   # Berkeley DB hash magic
    config(tmp_path, f"hash:{tmp_path}/aliases")
    result = mailferry("newaliases", config_dir=tmp_path)
    assert result.code == 0
    assert "replacing an index mailferry cannot read" in result.err
    assert open_table(f"hash:{tmp_path}/aliases").lookup_now("postmaster").value == "root"
