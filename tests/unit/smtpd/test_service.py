"""ServiceProfile.from_config: what one smtpd service takes from main.cf
(its -o overrides applied), rebuilt on every reload."""

from __future__ import annotations

from mailferry.config.config import Config
from mailferry.config.maincf import parse_main_cf
from mailferry.config.mastercf import parse_master_cf
import asyncio

from mailferry.policy.facts import SessionFacts
from mailferry.policy.session import SessionPolicy
from mailferry.smtpd.service import ServiceProfile, service_view

MAIN_CF = """\
myhostname = mx.example.test
mydestination = example.test
local_recipient_maps =
mynetworks = 192.0.2.0/24
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
relay_domains_reject_code = 550
smtpd_timeout = 42s
message_size_limit = 1000
"""


def profile(tmp_path, text: str = MAIN_CF, tls_context=None) -> ServiceProfile:
    return ServiceProfile.from_config(Config(str(tmp_path), parse_main_cf(text, str(tmp_path / "main.cf"))),
                                      tls_context)


def test_relay_control_comes_from_main_cf_with_its_reject_code(tmp_path):
    engine = profile(tmp_path).policy

    def rcpt(address):
        policy = SessionPolicy(engine, SessionFacts("203.0.113.9", in_mynetworks=False))
        policy.record_mail("a@remote.example")
        return asyncio.run(policy.rcpt(address))
    assert rcpt("carol@remote.example").reply.to_bytes() == b"550 5.7.1 <carol@remote.example>: Relay access denied\r\n"
    assert rcpt("bob@example.test") is None


def test_the_session_settings_come_from_main_cf(tmp_path):
    built = profile(tmp_path)
    assert built.timeout == 42
    assert built.settings.hostname == "mx.example.test"
    assert built.settings.message_size_limit == 1000
    assert built.mynetworks.matches("192.0.2.7") and not built.mynetworks.matches("203.0.113.9")


def test_starttls_is_offered_only_with_a_certificate(tmp_path):
    assert not profile(tmp_path).settings.starttls
    assert profile(tmp_path, tls_context=object()).settings.starttls


def test_content_filter_is_the_services_view_of_it(tmp_path):
    """main.cf's content_filter, unless the master.cf service says -o content_filter= (the
    re-injection service of FILTER_README)."""
    config = Config(str(tmp_path), parse_main_cf(MAIN_CF + "content_filter = smtp:[127.0.0.1]:10024\n",
                                                 str(tmp_path / "main.cf")))
    master = parse_master_cf("smtp inet n - n - - smtpd\n"
                             "127.0.0.1:10025 inet n - n - - smtpd -o content_filter=\n", "master.cf")
    views = [service_view(config, service) for service in master.services]
    assert [ServiceProfile.from_config(view, None).content_filter for view in views] == \
        ["smtp:[127.0.0.1]:10024", ""]
    assert profile(tmp_path).content_filter == ""
