from tests.conftest import seed_file, write


def test_seed_sasl_passwd_build_and_query(tmp_path, mailferry):
    source = write(tmp_path / "sasl_passwd", seed_file("sasl_passwd"))
    built = mailferry("postmap", f"hash:{source}", config_dir=tmp_path)
    assert built.code == 0, built.err
    assert built.err == ""
    found = mailferry("postmap", "-q", "smtp.gmail.com", f"hash:{source}", config_dir=tmp_path)
    assert (found.code, found.out) == (0, "user.name@gmail.com:password\n")
    missing = mailferry("postmap", "-q", "smtp.example.com", f"hash:{source}", config_dir=tmp_path)
    assert (missing.code, missing.out) == (1, "")


def test_bare_file_name_means_hash(tmp_path, mailferry):
    source = write(tmp_path / "t", "a 1\n")
    assert mailferry("postmap", source).code == 0
    assert (tmp_path / "t.db").exists()


def test_query_many_keys_from_stdin(tmp_path, mailferry):
    source = write(tmp_path / "t", "a 1\nb 2\n")
    mailferry("postmap", f"hash:{source}")
    result = mailferry("postmap", "-q", "-", f"hash:{source}", stdin="a\nzz\nB\n")
    assert (result.code, result.out) == (0, "a\t1\nB\t2\n")
    none = mailferry("postmap", "-q", "-", f"hash:{source}", stdin="zz\n")
    assert none.code == 1


def test_first_table_that_knows_the_key_answers(tmp_path, mailferry):
    source = write(tmp_path / "t", "a 1\n")
    mailferry("postmap", f"hash:{source}")
    result = mailferry("postmap", "-q", "a", "inline:{a=inline}", f"hash:{source}")
    assert result.out == "inline\n"


def test_dump(tmp_path, mailferry):
    source = write(tmp_path / "t", "b 2\na 1\n")
    mailferry("postmap", f"hash:{source}")
    result = mailferry("postmap", "-s", f"hash:{source}")
    assert (result.code, sorted(result.out.splitlines())) == (0, ["a\t1", "b\t2"])


def test_duplicates_are_warned_with_line_numbers(tmp_path, mailferry):
    source = write(tmp_path / "t", "a 1\na 2\n")
    result = mailferry("postmap", f"hash:{source}")
    assert result.code == 0
    assert f'warning: {source}, line 2: duplicate entry: "a" (first on line 1, which wins)' in result.err


def test_stale_index_warns_on_lookup(tmp_path, mailferry):
    import os
    source = write(tmp_path / "t", "a 1\n")
    mailferry("postmap", f"hash:{source}")
    os.utime(source, (os.stat(source).st_mtime + 60,) * 2)
    result = mailferry("postmap", "-q", "a", f"hash:{source}")
    assert result.code == 0
    assert "is older than source file" in result.err


def test_missing_index_is_an_error_with_the_fix(tmp_path, mailferry):
    source = write(tmp_path / "t", "a 1\n")
    result = mailferry("postmap", "-q", "a", f"hash:{source}")
    assert result.code == 2
    assert f"build it with: mailferry postmap hash:{source}" in result.err


def test_an_unreachable_directory_is_a_temporary_failure_naming_the_servers(tmp_path, mailferry):
    # Nothing listens on loopback ports 1 and 2: both connections are refused at once.
    table = write(tmp_path / "ldap.cf", "server_host = ldap://127.0.0.1:1/ 127.0.0.1:2\nbind = no\n")
    result = mailferry("postmap", "-q", "x@example.com", f"ldap:{table}")
    assert result.code == 2 and result.out == ""
    assert "temporary failure" in result.err
    assert "ldap://127.0.0.1:1/" in result.err and "ldap://127.0.0.1:2" in result.err


def test_a_missing_ldap_file_is_an_error_naming_it(tmp_path, mailferry):
    result = mailferry("postmap", "-q", "x", f"ldap:{tmp_path}/ldap.cf")
    assert result.code == 2 and f"{tmp_path}/ldap.cf: cannot open" in result.err


def test_nothing_to_build_for_unindexed_types(tmp_path, mailferry):
    result = mailferry("postmap", f"regexp:{tmp_path}/x")
    assert result.code == 2 and "nothing to build" in result.err


def test_unknown_command(mailferry):
    result = mailferry("frobnicate")
    assert result.code == 2 and "unknown command 'frobnicate'" in result.err


def test_start_refuses_a_broken_configuration(tmp_path, mailferry):
    result = mailferry("start", config_dir=tmp_path)
    assert result.code == 2
    assert f"mailferry/master: error: {tmp_path}/main.cf: cannot open" in result.err
    assert "mailferry/master: fatal: the configuration has 1 error(s)" in result.err
