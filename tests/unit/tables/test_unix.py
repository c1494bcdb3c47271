"""unix:passwd.byname and unix:group.byname answer what Postfix's dict_unix answers.

Postfix's own `postmap -q KEY unix:MAP` is the reference (Debian's postfix
package, installed by scripts/setup --test): same value, same "not found".
"""

from __future__ import annotations

import subprocess

import pytest

from mailferry.tables import TableError, open_table


def postfix_answer(tmp_path, key: str, spec: str) -> str | None:
    (tmp_path / "main.cf").write_text("")
    proc = subprocess.run(["postmap", "-q", key, spec], capture_output=True, text=True, timeout=30,
                          env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "MAIL_CONFIG": str(tmp_path)})
    assert proc.returncode in (0, 1), proc.stderr
    return proc.stdout.rstrip("\n") if proc.returncode == 0 else None


@pytest.mark.parametrize("key, spec", [
    ("root", "unix:passwd.byname"), ("nobody", "unix:passwd.byname"), ("ROOT", "unix:passwd.byname"),
    ("no-such-user-here", "unix:passwd.byname"), ("root@example.test", "unix:passwd.byname"),
    ("nogroup", "unix:group.byname"), ("mail", "unix:group.byname"), ("no-such-group", "unix:group.byname"),
])
def test_the_same_answer_as_postfix(tmp_path, key, spec):
    result = open_table(spec).lookup_now(key)
    assert (result.value if result.found else None) == postfix_answer(tmp_path, key, spec)


def test_proxy_opens_the_table_behind_it():
    table = open_table("proxy:unix:passwd.byname")
    assert table.spec == "proxy:unix:passwd.byname"
    assert table.inner.spec == "unix:passwd.byname"
    assert table.lookup_now("root").value.startswith("root:x:0:0:")


def test_an_unknown_unix_map_is_a_configuration_error():
    with pytest.raises(TableError, match="unknown UNIX map"):
        open_table("unix:shadow.byname")


def test_nis_without_a_nis_client_finds_nothing():
    assert open_table("nis:mail.aliases").lookup_now("root").not_found
