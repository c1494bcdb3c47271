import shutil
import subprocess

import pytest

from tests.conftest import ROOT, seed_file, write


def test_n_shows_only_main_cf_settings_sorted(tmp_path, mailferry):
    write(tmp_path / "main.cf", "relayhost = [smtp.gmail.com]:587\nmyhostname = my.dynamicdns.domain.name\n"
          "myorigin = $myhostname\n", 0o644)
    result = mailferry("postconf", "-n", config_dir=tmp_path)
    assert result.code == 0
    # Postfix adds config_directory when -c names a non-default directory; so does mailferry.
    assert result.out == (f"config_directory = {tmp_path}\n"
                          "myhostname = my.dynamicdns.domain.name\nmyorigin = $myhostname\n"
                          "relayhost = [smtp.gmail.com]:587\n")


def test_named_parameters_raw_expanded_and_value_only(tmp_path, mailferry):
    write(tmp_path / "main.cf", "myhostname = mx.example.com\n", 0o644)
    assert mailferry("postconf", "myorigin", config_dir=tmp_path).out == "myorigin = $myhostname\n"
    assert mailferry("postconf", "-x", "myorigin", config_dir=tmp_path).out == "myorigin = mx.example.com\n"
    assert mailferry("postconf", "-h", "-x", "mydomain", config_dir=tmp_path).out == "example.com\n"


def test_defaults(tmp_path, mailferry):
    write(tmp_path / "main.cf", "message_size_limit = 1\n", 0o644)
    result = mailferry("postconf", "-d", "message_size_limit", "smtp_tls_eccert_file", config_dir=tmp_path)
    assert result.out == "message_size_limit = 10240000\nsmtp_tls_eccert_file =\n"


def test_unknown_name_is_warned(tmp_path, mailferry):
    write(tmp_path / "main.cf", "", 0o644)
    result = mailferry("postconf", "relay_host", config_dir=tmp_path)
    assert result.out == "" and "relay_host: unknown parameter" in result.err


def test_all_parameters_listed(tmp_path, mailferry):
    write(tmp_path / "main.cf", "", 0o644)
    lines = mailferry("postconf", config_dir=tmp_path).out.splitlines()
    assert len(lines) > 900
    assert "message_size_limit = 10240000" in lines
    assert lines == sorted(lines, key=lambda line: line.split(" ")[0])


def test_services(tmp_path, mailferry):
    write(tmp_path / "main.cf", "", 0o644)
    shutil.copy(ROOT / "examples" / "quickstart" / "master.cf", tmp_path / "master.cf")
    result = mailferry("postconf", "-M", "smtp/unix", config_dir=tmp_path)
    assert result.code == 0
    assert result.out.split() == ["smtp", "unix", "-", "-", "n", "-", "-", "smtp"]


def test_d_and_n_together_is_refused(tmp_path, mailferry):
    write(tmp_path / "main.cf", "", 0o644)
    assert mailferry("postconf", "-d", "-n", config_dir=tmp_path).code == 2


POSTFIX_DEFAULTS_WE_SHARE = [
    "message_size_limit", "myorigin", "mydestination", "smtpd_recipient_limit", "hopcount_limit",
    "maximal_backoff_time", "minimal_backoff_time", "maximal_queue_lifetime", "bounce_queue_lifetime",
    "queue_run_delay", "smtp_sasl_security_options", "smtp_sasl_tls_security_options",
    "smtp_tls_security_level", "smtpd_tls_security_level", "default_transport", "relay_transport",
    "local_transport", "recipient_delimiter", "alias_maps", "default_destination_concurrency_limit",
]


@pytest.mark.integration
def test_shared_defaults_agree_with_real_postconf(tmp_path, mailferry):
    postconf = shutil.which("postconf") or "/usr/sbin/postconf"
    write(tmp_path / "main.cf", "", 0o644)
    theirs = subprocess.run([postconf, "-c", str(tmp_path), "-d", *POSTFIX_DEFAULTS_WE_SHARE],
                            capture_output=True, text=True, check=True).stdout
    ours = mailferry("postconf", "-d", *POSTFIX_DEFAULTS_WE_SHARE, config_dir=tmp_path).out
    assert sorted(ours.splitlines()) == sorted(theirs.splitlines())


@pytest.mark.integration
def test_postconf_n_agrees_with_real_postconf_on_the_seed(tmp_path, mailferry):
    postconf = shutil.which("postconf") or "/usr/sbin/postconf"
    text = seed_file("relay-main.cf")
    write(tmp_path / "main.cf", text, 0o644)
    theirs = subprocess.run([postconf, "-c", str(tmp_path), "-n"], capture_output=True, text=True).stdout
    ours = mailferry("postconf", "-n", config_dir=tmp_path).out
    assert ours.splitlines() == theirs.splitlines()   # config_directory = DIR included, as Postfix
