"""import-postfix's path finding and rewriting (cli/import_postfix.py); the whole command runs
against real tables, slapd and the daemon in tests/integration/test_import_postfix.py."""

from mailferry.cli.import_postfix import Import
from mailferry.cli.output import Reporter


def job(tmp_path) -> Import:
    return Import("/etc/postfix", str(tmp_path / "mf"), Reporter("test"))


def test_references_of_every_form(tmp_path):
    found = job(tmp_path).references(
        "hash:/etc/postfix/virtual, proxy:ldap:/etc/postfix/ldap.cf regexp:$config_directory/hc "
        "pcre:${config_directory}/p cidr:$(config_directory)/c /etc/postfix/cert.pem {hash:/etc/postfix/x}")
    assert found == [("hash", "/etc/postfix/virtual"), ("ldap", "/etc/postfix/ldap.cf"),
                     ("regexp", "/etc/postfix/hc"), ("pcre", "/etc/postfix/p"), ("cidr", "/etc/postfix/c"),
                     ("", "/etc/postfix/cert.pem"), ("hash", "/etc/postfix/x")]


def test_rewrite_touches_only_the_postfix_directory(tmp_path):
    importer = job(tmp_path)
    target = importer.target
    text = ("a = hash:/etc/postfix/virtual\nb = /etc/postfix-out/x /etc/postfixes\n"
            "config_directory = /etc/postfix\nc = /usr/etc/postfix/x, /etc/postfix/y\n")
    assert importer.rewrite(text) == (f"a = hash:{target}/virtual\nb = /etc/postfix-out/x /etc/postfixes\n"
                                      f"config_directory = {target}\nc = /usr/etc/postfix/x, {target}/y\n")


def test_an_indexed_source_elsewhere_is_pointed_at_its_copy(tmp_path):
    importer = job(tmp_path)
    importer.moved_outside["/etc/aliases"] = f"{importer.target}/aliases"
    assert importer.rewrite("alias_maps = hash:/etc/aliases\nx = /etc/aliases.d/y\n") == \
        f"alias_maps = hash:{importer.target}/aliases\nx = /etc/aliases.d/y\n"


def test_postfix_own_queue_and_data_directories_are_commented_out(tmp_path):
    text = job(tmp_path).rewrite_main_cf("queue_directory = /var/spool/postfix\n"
                                         "data_directory = /var/lib/postfix/\nqueue_directory_x = 1\n")
    lines = text.splitlines()
    assert lines[1] == "#queue_directory = /var/spool/postfix" and lines[3] == "#data_directory = /var/lib/postfix/"
    assert lines[0].startswith("# mailferry import-postfix: queue_directory named Postfix's own directory")
    assert lines[4] == "queue_directory_x = 1"


def test_files_a_table_file_names_are_copied_and_pointed_at(tmp_path):
    postfix_dir = tmp_path / "postfix"
    postfix_dir.mkdir()
    (postfix_dir / "ca.pem").write_text("certificate\n")
    (postfix_dir / "ldap.cf").write_text(f"server_host = ldap://ldap1/\ntls_ca_cert_file = {postfix_dir}/ca.pem\n")
    (postfix_dir / "ldap.cf").chmod(0o640)
    importer = Import(str(postfix_dir), str(tmp_path / "mf"), Reporter("test"))
    importer.collect("virtual_alias_maps", f"ldap:{postfix_dir}/ldap.cf")
    copied = tmp_path / "mf" / "ldap.cf"
    assert copied.read_text() == f"server_host = ldap://ldap1/\ntls_ca_cert_file = {tmp_path}/mf/ca.pem\n"
    assert copied.stat().st_mode & 0o777 == 0o640                  # a bind_pw file stays private
    assert (tmp_path / "mf" / "ca.pem").read_text() == "certificate\n"
    assert (postfix_dir / "ldap.cf").read_text().endswith(f"{postfix_dir}/ca.pem\n")   # the original as it was


def test_two_indexed_sources_elsewhere_with_one_name_get_two_copies(tmp_path):
    for directory in ("etc", "mail"):
        (tmp_path / directory).mkdir()
        (tmp_path / directory / "aliases").write_text(f"root: {directory}\n")
    importer = Import(str(tmp_path / "postfix"), str(tmp_path / "mf"), Reporter("test"))
    importer.collect("alias_maps", f"hash:{tmp_path}/etc/aliases, hash:{tmp_path}/mail/aliases")
    assert importer.moved_outside == {f"{tmp_path}/etc/aliases": f"{tmp_path}/mf/aliases",
                                      f"{tmp_path}/mail/aliases": f"{tmp_path}/mf/mail-aliases"}
    assert (tmp_path / "mf" / "mail-aliases").read_text() == "root: mail\n"
