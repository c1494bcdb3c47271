import socket

import pytest

from mailferry.config.config import Config, ConfigValueError
from mailferry.config.localdomains import local_domain_matcher
from mailferry.config.maincf import parse_main_cf


def config(text="", directory="/etc/mailferry"):
    return Config(directory, parse_main_cf(text, f"{directory}/main.cf"))


def test_setting_overrides_default():
    assert config("message_size_limit = 5000\n").size("message_size_limit") == 5000
    assert config().size("message_size_limit") == 10240000


def test_defaults_expand_through_other_parameters():
    c = config("myhostname = mail.example.com\n")
    assert c.get("mydomain") == "example.com"
    assert c.get("myorigin") == "mail.example.com"
    assert c.list("mydestination") == ["mail.example.com", "localhost.example.com", "localhost"]


def test_seed_login_snippet():
    c = config("mydomain = example.com\nmyorigin = $mydomain\nmydestination =\n")
    assert c.get("myorigin") == "example.com"
    assert c.list("mydestination") == []


def test_config_directory_is_the_directory_read():
    assert config(directory="/tmp/x").get("config_directory") == "/tmp/x"


def test_myhostname_default_from_host(monkeypatch):
    monkeypatch.setattr(socket, "gethostname", lambda: "vm")
    assert config().get("myhostname") == "vm.localdomain"
    assert config().get("mydomain") == "localdomain"
    assert config("mydomain = example.org\n").get("myhostname") == "vm.example.org"
    monkeypatch.setattr(socket, "gethostname", lambda: "mx1.example.net")
    assert config().get("mydomain") == "example.net"


def test_mynetworks_host_style_includes_loopback():
    networks = config().list("mynetworks")
    assert networks[0] == "127.0.0.1/32" and "[::1]/128" in networks   # as Postfix's host style
    assert all(n.endswith("/32") or n.endswith("/128") for n in networks)
    assert config().get("mynetworks_style") == "host"


def test_time_uses_the_parameters_default_unit():
    assert config("maximal_queue_lifetime = 2\n").time("maximal_queue_lifetime") == 2 * 86400
    assert config("smtpd_timeout = 2\n").time("smtpd_timeout") == 2
    assert config().time("smtpd_timeout") == 300


def test_typed_errors_name_file_line_and_parameter():
    with pytest.raises(ConfigValueError) as info:
        config("a = 1\nsmtpd_timeout = soon\n").time("smtpd_timeout")
    assert str(info.value).startswith("/etc/mailferry/main.cf, line 2: parameter smtpd_timeout: bad time value")


def test_boolean():
    assert config("smtpd_tls_received_header = yes\n").boolean("smtpd_tls_received_header") is True
    assert config().boolean("smtpd_tls_received_header") is False


def test_service_overrides_win_and_are_located():
    base = config("smtpd_tls_security_level = may\n")
    service = base.with_overrides({"smtpd_tls_security_level": "encrypt"}, "master.cf, line 17")
    assert service.get("smtpd_tls_security_level") == "encrypt"
    assert base.get("smtpd_tls_security_level") == "may"
    with pytest.raises(ConfigValueError, match="master.cf, line 17: parameter smtpd_timeout"):
        base.with_overrides({"smtpd_timeout": "x"}, "master.cf, line 17").time("smtpd_timeout")


def test_override_can_refer_to_a_user_parameter():
    base = config("mua_client_restrictions = permit_sasl_authenticated, reject\n")
    service = base.with_overrides({"smtpd_client_restrictions": "$mua_client_restrictions"}, "master.cf")
    assert service.list("smtpd_client_restrictions") == ["permit_sasl_authenticated", "reject"]


def test_unknown_name_has_no_value():
    assert config().raw("no_such_parameter") is None
    assert config().get("no_such_parameter") == ""


def test_local_domains_for_the_user_form():
    is_local = local_domain_matcher(config(
        "myhostname = mail1.internal\nmydomain = example.com\n"
        "mydestination = $myhostname, example.com\ninet_interfaces = 192.0.2.7\n"))
    assert is_local("mail1.internal") and is_local("EXAMPLE.COM") and is_local("example.com.")
    assert is_local("[192.0.2.7]")
    assert not is_local("example.org") and not is_local("[192.0.2.8]")


def test_local_domains_from_a_table(tmp_path):
    domains = tmp_path / "domains"
    domains.write_text("example.net OK\n")
    is_local = local_domain_matcher(config(f"mydestination = localhost, texthash:{domains}\n"))
    assert is_local("example.net") and is_local("localhost") and not is_local("example.org")
