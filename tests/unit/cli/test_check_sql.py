"""`mailferry check` on SQL table files and proxy: tables (issue 15): errors at the table file's
own line, Postfix's proxymap refusal as a warning naming what to add, and `postmap` saying, as
Postfix's does, that these tables are not built."""

from __future__ import annotations

import sqlite3

from tests.conftest import write


def test_a_malformed_sql_file_is_an_error_at_its_line(tmp_path, mailferry):
    write(tmp_path / "mysql.cf", "hosts = 127.0.0.1\ndbname = mail\nquery = SELECT goto FROM `%s`\n", 0o640)
    write(tmp_path / "pgsql.cf", "hosts = 127.0.0.1\nuser postfix\n", 0o640)
    write(tmp_path / "main.cf", f"virtual_alias_maps = proxy:mysql:{tmp_path}/mysql.cf\n"
                                f"transport_maps = pgsql:{tmp_path}/pgsql.cf\n", 0o644)
    result = mailferry("check", config_dir=tmp_path)
    assert result.code == 1
    assert (f"error: {tmp_path}/main.cf, line 1: parameter virtual_alias_maps: table proxy:mysql:{tmp_path}/mysql.cf: "
            f"{tmp_path}/mysql.cf, line 3: query: `%s` puts a % expansion into a quoted name") in result.err, result.err
    assert f"{tmp_path}/pgsql.cf, line 2: missing '=' after attribute name: 'user postfix'" in result.err


def test_unknown_names_a_readable_password_and_a_missing_sqlite_file(tmp_path, mailferry):
    write(tmp_path / "mysql.cf", "hosts = 127.0.0.1\nport = 3306\ndbname = mail\npassword = secret\n"
                                 "query = SELECT goto FROM aliases WHERE address='%s'\n", 0o644)
    write(tmp_path / "sqlite.cf", f"dbpath = {tmp_path}/none.db\nquery = SELECT 1 WHERE 'a' = '%s'\n", 0o644)
    write(tmp_path / "main.cf", f"virtual_alias_maps = mysql:{tmp_path}/mysql.cf sqlite:{tmp_path}/sqlite.cf\n",
          0o644)
    result = mailferry("check", config_dir=tmp_path)
    assert f"warning: {tmp_path}/mysql.cf, line 2: unknown mysql_table parameter 'port': write the port in hosts" \
        in result.err, result.err
    assert f"warning: {tmp_path}/mysql.cf, line 4: password is readable by everyone" in result.err
    assert f"error: {tmp_path}/sqlite.cf, line 1: dbpath = {tmp_path}/none.db: no such database file" in result.err
    assert result.code == 1


def test_a_proxy_table_proxy_read_maps_does_not_list_is_a_warning_naming_the_fix(tmp_path, mailferry):
    database = tmp_path / "a.db"
    sqlite3.connect(database).close()
    write(tmp_path / "sqlite.cf", f"dbpath = {database}\nquery = SELECT 1 WHERE 'a' = '%s'\n", 0o644)
    spec = f"proxy:sqlite:{tmp_path}/sqlite.cf"
    # Listed by the default proxy_read_maps ($virtual_alias_maps): nothing to say.
    write(tmp_path / "main.cf", f"virtual_alias_maps = {spec}\n", 0o644)
    assert "proxy_read_maps" not in mailferry("check", config_dir=tmp_path).err
    write(tmp_path / "main.cf", f"virtual_alias_maps = {spec}\nproxy_read_maps = $local_recipient_maps\n", 0o644)
    result = mailferry("check", config_dir=tmp_path)
    assert (f"warning: {tmp_path}/main.cf, line 1: parameter virtual_alias_maps: table {spec}: proxy_read_maps "
            f"does not list {spec}, so proxymap refuses it") in result.err, result.err
    assert f"add {spec} to proxy_read_maps" in result.err
    assert result.code == 0


def test_postmap_does_not_build_sql_or_proxy_tables_as_postfix(tmp_path, mailferry):
    write(tmp_path / "s.cf", "dbpath = /x.db\nquery = SELECT 1\n", 0o644)
    built = mailferry("postmap", f"sqlite:{tmp_path}/s.cf")
    assert built.code != 0 and "unsupported dictionary type: sqlite does not support bulk-mode creation" in built.err
    proxied = mailferry("postmap", f"proxy:sqlite:{tmp_path}/s.cf")
    assert proxied.code != 0 and "can't create maps via the proxy service" in proxied.err
