"""The pure parts of `ldap:` tables: the file, the templates and escapes, result assembly, the
cache. Against real slapd and Postfix's postmap: tests/integration/test_ldap_table.py."""

import asyncio

import pytest

from mailferry.tables import TableError, open_table
from mailferry.tables.ldap import file_problems
from mailferry.tables.ldap.settings import DEFAULTS, load_config, read_settings
from mailferry.tables.ldap.templates import Templates, TemplateError, escape_dn_value, escape_filter_value
from mailferry.tables.result import MISSING, found, tempfail


def ldap_file(tmp_path, text: str, name: str = "ldap.cf"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


# --- escaping ---------------------------------------------------------------------------


def test_filter_escapes_are_postfixs_exact_ones():
    assert escape_filter_value("*@example.com") == "\\2A@example.com"
    assert escape_filter_value("a)(mail=*") == "a\\29\\28mail=\\2A"
    assert escape_filter_value("back\\slash") == "back\\5Cslash"
    assert escape_filter_value("plain.user@example.com") == "plain.user@example.com"


def test_dn_escapes_cover_rfc4514_specials():
    assert escape_dn_value("a,b+c") == "a\\2Cb\\2Bc"
    assert escape_dn_value(' #x"<>;\\') == "\\20\\23x\\22\\3C\\3E\\3B\\5C"


# --- templates --------------------------------------------------------------------------


def templates(query="(mail=%s)", result="%s", base="dc=example,dc=com") -> Templates:
    return Templates(base, query, result)


def test_query_expansions_of_a_key():
    t = templates("(&(uid=%u)(domain=%d)(tld=%1)(sld=%2)(all=%s)(%%))")
    assert t.query("john@mail.example.com") == \
        "(&(uid=john)(domain=mail.example.com)(tld=com)(sld=example)(all=john@mail.example.com)(%))"


def test_every_expanded_piece_is_escaped():
    t = templates("(&(uid=%u)(domain=%d))")
    assert t.query("a*(b@x)y.com") == "(&(uid=a\\2A\\28b)(domain=x\\29y.com))"


def test_keys_that_cannot_fill_the_templates_are_not_searched():
    assert not templates("(mail=%d)").key_is_eligible("user")         # no domain
    assert not templates("(mail=%d)").key_is_eligible("user@")        # empty domain
    assert not templates("(uid=%u)").key_is_eligible("@example.com")  # empty local part
    assert not templates("(dc=%3)").key_is_eligible("a@example.com")  # too few labels
    assert templates("(dc=%2)").key_is_eligible("a@example.com")
    assert not templates().key_is_eligible("")                        # empty key
    # %u alone: an unqualified key is its own local part
    assert templates("(uid=%u)").key_is_eligible("user")
    assert templates("(uid=%u)").query("user") == "(uid=user)"
    # the result template's %D also requires the key's domain, as Postfix's shared flags do
    assert not templates(result="%D").key_is_eligible("user")


def test_result_format_uses_the_value_in_lower_case_and_the_key_in_upper_case():
    t = templates(result="%u+%U@%D")
    assert t.result("mailbox@mail1.internal", "alias@example.com") == "mailbox+alias@example.com"
    assert templates(result="%s@%d").result("john@mail1.internal", "k@x") == "john@mail1.internal@mail1.internal"
    assert templates(result="%S").result("v", "key@example.com") == "key@example.com"


def test_results_that_cannot_fill_the_format_are_skipped():
    assert templates(result="%d").result("no-domain", "k@x") is None
    assert templates(result="%u").result("@domain.only", "k@x") is None
    assert templates().result("", "k@x") is None


def test_a_search_base_with_expansions_is_dn_escaped():
    t = templates(base="ou=%d,dc=example,dc=com")
    assert t.dynamic_base and t.base("a@x,y") == "ou=x\\2Cy,dc=example,dc=com"
    assert not templates().dynamic_base


def test_an_unknown_template_letter_is_refused():
    with pytest.raises(TemplateError, match="%x"):
        templates("(mail=%x)")


# --- the file ---------------------------------------------------------------------------


def test_defaults_are_postfixs(tmp_path):
    config = load_config(ldap_file(tmp_path, "search_base = dc=example,dc=com\n"))
    assert config.server_urls == ["ldap://localhost:389"]
    assert config.version == 3 and config.timeout == 10 and config.scope == 2
    assert config.result_attributes == ["maildrop"]
    assert config.templates.query_filter == "(mailacceptinggeneralid=%s)"
    assert config.templates.result_format == "%s"
    assert config.bind == "simple" and config.size_limit == 0 and config.recursion_limit == 1000
    assert not config.start_tls and not config.tls_require_cert and not config.chase_referrals


def test_the_parameters_listed_are_every_ldap_table_parameter():
    for name in ("server_host", "server_port", "search_base", "scope", "query_filter", "result_attribute",
                 "result_format", "special_result_attribute", "leaf_result_attribute",
                 "terminal_result_attribute", "size_limit", "expansion_limit", "domain", "bind",
                 "bind_dn", "bind_pw", "version", "timeout", "start_tls", "tls_ca_cert_file",
                 "tls_require_cert", "dereference", "chase_referrals", "recursion_limit"):
        assert name in DEFAULTS


def test_server_host_forms(tmp_path):
    config = load_config(ldap_file(tmp_path, "server_host = ldap1.internal, ldap2.internal:1389\n"
                                             "  ldaps://ldap3.internal/ ldapi://%2Frun%2Fslapd.sock\n"
                                             "server_port = 3389\n"))
    assert config.server_urls == ["ldap://ldap1.internal:3389", "ldap://ldap2.internal:1389",
                                  "ldaps://ldap3.internal/", "ldapi://%2Frun%2Fslapd.sock"]
    assert config.version == 3


def test_version_2_is_raised_to_3_for_ldaps_as_postfix_does(tmp_path):
    config = load_config(ldap_file(tmp_path, "version = 2\nserver_host = ldaps://ldap.internal/\n"))
    assert config.version == 3 and "requires protocol version 3" in config.warnings[0]


def test_size_limit_defaults_to_expansion_limit_and_result_filter_is_the_old_name(tmp_path):
    config = load_config(ldap_file(tmp_path, "expansion_limit = 7\nresult_filter = %u\n"))
    assert config.size_limit == 7 and config.expansion_limit == 7
    assert config.templates.result_format == "%u"
    config = load_config(ldap_file(tmp_path, "result_filter = %u\nresult_format = %d\n"))
    assert config.templates.result_format == "%d"


def test_attribute_order_is_terminal_leaf_ordinary_special(tmp_path):
    config = load_config(ldap_file(tmp_path, "result_attribute = a, b\nspecial_result_attribute = member\n"
                                             "terminal_result_attribute = t\nleaf_result_attribute = l\n"))
    assert config.result_attributes == ["t", "l", "a", "b", "member"]
    assert (config.terminal, config.leaf, config.ordinary) == (1, 1, 4)


def test_values_are_taken_as_written_without_dollar_expansion(tmp_path):
    config = load_config(ldap_file(tmp_path, "search_base = $mydomain\nbind_pw = pa$$word\n"))
    assert config.templates.search_base == "$mydomain"
    assert config.settings.get("bind_pw") == "pa$$word"


def test_unknown_and_repeated_parameters_are_problems_at_their_line(tmp_path):
    path = ldap_file(tmp_path, "# comment\nbind = no\nspecial_result_filter = %s@%d\nbind = yes\n")
    problems = [(problem.line, problem.message) for problem in file_problems(path)]
    assert problems[0][0] == 3 and "unknown ldap_table parameter 'special_result_filter'" in problems[0][1]
    assert problems[1] == (4, "bind is also set at line 2; this later value is used")


def test_a_bind_password_readable_by_everyone_is_a_problem(tmp_path):
    path = ldap_file(tmp_path, "bind_dn = cn=mail,dc=example,dc=com\nbind_pw = secret\n")
    import os
    os.chmod(path, 0o644)
    assert [(problem.line, problem.message.split(";")[0]) for problem in file_problems(path)] == \
        [(2, "bind_pw is readable by everyone (mode 0644)")]
    os.chmod(path, 0o640)
    assert file_problems(path) == []


@pytest.mark.parametrize("text, message", [
    ("size_limit = lots\n", "line 1: bad numerical configuration: size_limit = lots"),
    ("start_tls = maybe\n", "line 1: bad boolean configuration: start_tls = maybe"),
    ("bind = kerberos\n", "line 1: unsupported parameter value: bind = kerberos"),
    ("version = 1\n", "line 1: invalid version parameter value 1 < 2"),
    ("just words\n", "line 1: missing '=' after attribute name"),
    ("query_filter = (mail=%q)\n", "invalid query template"),
])
def test_a_broken_file_is_a_table_error_at_its_line(tmp_path, text, message):
    with pytest.raises(TableError, match=message.replace("(", "\\(").replace(")", "\\)")):
        load_config(ldap_file(tmp_path, text))


def test_a_parameter_prefix_name_is_refused_with_the_fix():
    with pytest.raises(TableError, match="give its path"):
        open_table("ldap:ldapsource")


def test_continuation_lines_join_as_in_main_cf(tmp_path):
    settings = read_settings(ldap_file(tmp_path, "query_filter = (&(objectclass=mailRecipient)\n"
                                                 "    (mail=%s))\n"))
    assert settings.get("query_filter") == "(&(objectclass=mailRecipient)    (mail=%s))"


# --- the table, without a server --------------------------------------------------------


class FakeDirectory:
    def __init__(self, answers):
        self.answers = answers
        self.asked = []
        self.servers = []

    def lookup(self, key):
        self.asked.append(key)
        return self.answers.get(key, MISSING)


def table_with(tmp_path, answers, text="bind = no\n"):
    table = open_table(f"ldap:{ldap_file(tmp_path, text)}")
    table._directory = FakeDirectory(answers)
    return table


def test_keys_are_lower_cased_and_found_answers_cached(tmp_path):
    table = table_with(tmp_path, {"a@example.com": found("box@mail1.internal")})
    assert table.lookup_now("A@Example.COM").value == "box@mail1.internal"
    assert asyncio.run(table.lookup("a@example.com")).value == "box@mail1.internal"
    assert table.directory.asked == ["a@example.com"]
    table.close()


def test_a_temporary_failure_is_never_cached(tmp_path):
    table = table_with(tmp_path, {"a@example.com": tempfail("down")})
    assert asyncio.run(table.lookup("a@example.com")).tempfail
    assert asyncio.run(table.lookup("a@example.com")).tempfail
    assert table.directory.asked == ["a@example.com"] * 2
    table.close()


def test_domain_limits_which_keys_are_searched(tmp_path):
    domains = ldap_file(tmp_path, "example.org\n", "domains")
    table = table_with(tmp_path, {}, f"domain = example.com, {domains}, !skip.example, inline:{{x.example=1}}\n")
    for key in ("a@example.com", "a@example.org", "a@x.example"):
        table.lookup_now(key)
    for key in ("a@sub.example.com", "example.com", "@example.com", "a@skip.example", "a@other.example"):
        assert table.lookup_now(key).not_found
    assert table.directory.asked == ["a@example.com", "a@example.org", "a@x.example"]


# --- result assembly (dict_ldap_get_values), with entries as python-ldap gives them -------


def directory_for(tmp_path, text):
    from mailferry.tables.ldap.client import Directory
    return Directory(load_config(ldap_file(tmp_path, text)), warn=lambda text: None)


def collect(directory, entries, key="k@example.com"):
    values = []
    directory._collect(None, entries, key, values, depth=1)
    return values


def test_values_of_every_entry_and_attribute_are_joined_in_order(tmp_path):
    directory = directory_for(tmp_path, "result_attribute = mailRoutingAddress, mailHost\n")
    entries = [("uid=a", {"mailRoutingAddress": [b"a@m1"], "mailHost": [b"m1"], "objectClass": [b"top"]}),
               ("uid=b", {"MAILROUTINGADDRESS": [b"b@m2", b"b2@m2"]})]
    assert collect(directory, entries) == ["a@m1", "m1", "b@m2", "b2@m2"]


def test_terminal_attributes_hide_the_others_and_leaf_ones_need_no_special(tmp_path):
    directory = directory_for(tmp_path, "result_attribute = maildrop\nterminal_result_attribute = final\n"
                                        "leaf_result_attribute = leafonly\nspecial_result_attribute = member\n")
    assert collect(directory, [("x", {"final": [b"f@x"], "maildrop": [b"m@x"]})]) == ["f@x"]
    assert collect(directory, [("x", {"leafonly": [b"l@x"], "maildrop": [b"m@x"]})]) == ["l@x", "m@x"]


def test_expansion_and_size_limits_are_temporary_failures(tmp_path):
    from mailferry.tables.ldap.client import QueryFailed
    directory = directory_for(tmp_path, "expansion_limit = 2\nsize_limit = 5\n")
    with pytest.raises(QueryFailed, match="expansion limit"):
        collect(directory, [("x", {"maildrop": [b"1", b"2", b"3"]})])
    directory = directory_for(tmp_path, "size_limit = 1\n")
    with pytest.raises(QueryFailed, match="size limit"):
        collect(directory, [("x", {"maildrop": [b"1"]}), ("y", {"maildrop": [b"2"]})])


def test_special_attributes_are_followed_as_base_searches_up_to_the_recursion_limit(tmp_path):
    from mailferry.tables.ldap.client import QueryFailed
    directory = directory_for(tmp_path, "special_result_attribute = member\nrecursion_limit = 2\n")
    asked = []

    def search(connection, base, scope, query, attributes):
        asked.append((base, scope, query))
        return [(base, {"maildrop": [base.split("=")[1].encode()], "member": [b"uid=deeper"]})]
    directory._search = search
    with pytest.raises(QueryFailed, match="recursion limit"):
        collect(directory, [("g", {"member": [b"uid=one"]})])
    assert asked == [("uid=one", 0, "objectclass=*")]


# --- failover order (Directory.lookup), with scripted servers ---------------------------------


def test_servers_out_of_rotation_go_last_and_are_still_tried_when_all_are_out(tmp_path):
    """A failed server rests OUT_OF_ROTATION seconds behind the others; when every server rests,
    all are tried anyway (Postfix-like), so mail flows as soon as one returns."""
    from mailferry.tables.ldap.client import ServerFailed
    directory = directory_for(tmp_path, "server_host = ldap://one.test/ ldap://two.test/\n")
    down: set[str] = {"ldap://one.test/", "ldap://two.test/"}
    tried: list[str] = []

    def lookup_on(server, key):
        tried.append(server.url)
        if server.url in down:
            raise ServerFailed("Can't contact LDAP server")
        server.resting_until = 0.0
        return found(f"{key} via {server.url}")

    directory._lookup_on = lookup_on
    assert directory.lookup("a@example.com").tempfail
    assert tried == ["ldap://one.test/", "ldap://two.test/"]
    down.clear()                          # both return, well within their 30 s of rest
    tried.clear()
    assert directory.lookup("a@example.com") == found("a@example.com via ldap://one.test/")
    assert tried == ["ldap://one.test/"]
    down.add("ldap://one.test/")          # one fails again: two answers, and goes first from now on
    tried.clear()
    assert directory.lookup("b@example.com") == found("b@example.com via ldap://two.test/")
    assert directory.lookup("c@example.com") == found("c@example.com via ldap://two.test/")
    assert tried == ["ldap://one.test/", "ldap://two.test/", "ldap://two.test/"]
