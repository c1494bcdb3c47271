import re
import subprocess
import sys
from pathlib import Path

import pytest

from mailferry.config import parameters_data
from mailferry.config.paramdocs import COMPUTED_RULES, render_markdown
from mailferry.config.parameters import (
    COMPUTED,
    IMPLEMENTED,
    IMPLEMENTED_PARAMETERS,
    KINDS,
    LEGACY_NAMES,
    NO_EFFECT,
    NO_EFFECT_PARAMETERS,
    NOT_YET,
    PER_TRANSPORT_SUFFIXES,
    STATUSES,
    lookup,
    parameters,
    per_transport_parameter,
    per_transport_suffixes,
    postfix_default,
)

ROOT = Path(__file__).resolve().parents[3]

SEED_PARAMETERS = [
    "myhostname", "myorigin", "relayhost", "smtp_sasl_password_maps",
    "smtp_sasl_security_options", "smtp_sasl_tls_security_options",
    "smtp_tls_eccert_file", "smtp_tls_eckey_file", "smtp_tls_security_level",
    "smtp_tls_CAfile", "smtpd_tls_received_header", "tls_random_source",
    "smtpd_tls_security_level", "virtual_alias_maps", "mydomain", "mydestination",
    "smtpd_recipient_restrictions", "smtpd_sender_login_maps",
]


def normal_value(value: str) -> str:
    """A default as Postfix uses it with an empty main.cf on an idle host:
    `${name?{a}:{b}}` tests a parameter that is unset (stress, old names),
    and a bare `$name` is that parameter's default; a level-dependent default is that of
    mailferry's default compatibility_level, 3.6."""
    def at_level_3_6(match):
        return match[2] if tuple(map(int, match[1].split("."))) > (3, 6) else match[3]
    value = re.sub(r"\$\{\{\$compatibility_level\} <level \{([\d.]+)\} \? \{(.*)\} : \{(.*)\}\}", at_level_3_6,
                   value)
    previous = None
    while previous != value:
        previous = value
        value = re.sub(r"\$\{\w+\?\{[^{}]*\}:\{([^{}]*)\}\}", r"\1", value)
    reference = re.fullmatch(r"\$\{?(\w+)\}?", value)
    if reference and lookup(reference[1]) is not None:
        return normal_value(lookup(reference[1]).default)
    return value


def test_every_postfix_parameter_is_there():
    assert len(parameters()) > 900


@pytest.mark.parametrize("name", SEED_PARAMETERS)
def test_the_seed_config_uses_known_parameters(name):
    assert lookup(name) is not None


def test_unknown_names_are_not_parameters():
    assert lookup("smtp_tls_CA_file") is None
    assert lookup("") is None


@pytest.mark.parametrize("name, default", [
    ("message_size_limit", "10240000"),
    ("myorigin", "$myhostname"),
    ("mydestination", "$myhostname, localhost.$mydomain, localhost"),
    ("config_directory", "/etc/mailferry"),
    ("queue_directory", "/var/spool/mailferry"),
    ("mail_owner", "mailferry"),
    ("setgid_group", "mailferry"),
    ("syslog_name", "mailferry"),
    ("maillog_file", ""),
    ("compatibility_level", "3.6"),
])
def test_defaults(name, default):
    assert lookup(name).default == default


def test_message_size_limit_is_a_size():
    assert lookup("message_size_limit").kind == "size"


def test_smtpd_timeout_is_in_seconds():
    timeout = lookup("smtpd_timeout")
    assert (timeout.kind, timeout.time_unit) == ("time", "s")
    assert normal_value(timeout.default) == "300s"


def test_maximal_queue_lifetime_is_in_days():
    lifetime = lookup("maximal_queue_lifetime")
    assert (lifetime.default, lifetime.kind, lifetime.time_unit) == ("5d", "time", "d")


@pytest.mark.parametrize("name, default", [
    ("mynetworks_style", "host"),
    ("relay_domains", ""),
    ("smtputf8_enable", "yes"),
    ("append_dot_mydomain", "no"),
    ("smtpd_relay_restrictions", "permit_mynetworks, permit_sasl_authenticated, defer_unauth_destination"),
    ("smtpd_relay_before_recipient_restrictions", "yes"),
    ("respectful_logging", "yes"),
    ("smtp_tls_fingerprint_digest", "sha256"),
])
def test_compatibility_level_defaults_are_those_of_level_3_6(name, default, tmp_path):
    """Unset, compatibility_level is 3.6: the level-dependent defaults expand to level 3.6's."""
    from mailferry.config.config import load
    (tmp_path / "main.cf").write_text("")
    assert load(str(tmp_path)).get(name) == default
    assert "compatibility_level" in lookup(name).default


def test_level_dependent_defaults_are_postfixs_own_expressions():
    """They follow the configured level as Postfix's do (config/compat.py, tests/unit/config/test_compat.py)."""
    dependent = [p for p in parameters().values() if p.default and "compatibility_level" in p.default]
    assert len(dependent) >= 10
    assert all(postfix_default(p) == p.default for p in dependent)


def test_host_dependent_defaults_are_not_frozen_from_the_build_machine():
    assert {"myhostname", "mydomain", "mynetworks", "process_id", "process_name"} <= COMPUTED
    for name in COMPUTED:
        assert lookup(name).default is None
    assert {p.name for p in parameters().values() if p.default is None} == COMPUTED


def test_every_computed_default_is_documented():
    assert set(COMPUTED_RULES) == COMPUTED


def test_distribution_build_paths_are_replaced_by_upstream_ones():
    assert lookup("daemon_directory").default == "/usr/libexec/postfix"
    debian_paths = ("/usr/lib/postfix/sbin", "/usr/share/doc/postfix")
    assert [p.name for p in parameters().values()
            if p.default and p.default.startswith(debian_paths)] == []


def test_every_status_is_one_of_three():
    assert {p.status for p in parameters().values()} == set(STATUSES)


def test_every_implemented_parameter_is_read_by_the_code():
    """"Supported" must mean some code reads it: its name appears as a string
    outside the parameter table (config.get("name"), a list of names...)."""
    import pathlib
    source = pathlib.Path(__file__).resolve().parents[3] / "src" / "mailferry"
    code = "".join(path.read_text() for path in source.rglob("*.py")
                   if path.name not in ("parameters.py", "parameters_data.py", "paramdocs.py"))
    implemented = {p.name for p in parameters().values() if p.status == IMPLEMENTED}
    # Per-transport parameters (relay_destination_concurrency_limit) are read as
    # "<service>_" + suffix: the code names their suffix.
    unread = sorted(name for name in implemented if f'"{name}"' not in code
                    and not _read_per_transport(name, code))
    assert unread == []


def _read_per_transport(name: str, code: str) -> bool:
    from mailferry.config.parameters import IMPLEMENTED_PARAMETERS
    return any(name.endswith("_" + template[len("transport_"):]) and f'"{template[len("transport_"):]}"' in code
               for template in IMPLEMENTED_PARAMETERS if template.startswith("transport_"))


@pytest.mark.parametrize("name, status", [
    ("tls_random_source", NO_EFFECT),
    ("readme_directory", NO_EFFECT),
    ("compatibility_level", IMPLEMENTED),
    ("smtp_tls_eccert_file", NOT_YET),
    ("parent_domain_matches_subdomains", IMPLEMENTED),
    ("resolve_null_domain", NOT_YET),
    ("relayhost", IMPLEMENTED),
])
def test_statuses(name, status):
    assert lookup(name).status == status


def test_status_lists_name_only_real_parameters():
    templates = {"transport_" + suffix for suffix in PER_TRANSPORT_SUFFIXES}
    for name in IMPLEMENTED_PARAMETERS | NO_EFFECT_PARAMETERS:
        assert lookup(name) is not None or name in templates, name
    assert not IMPLEMENTED_PARAMETERS & NO_EFFECT_PARAMETERS


def test_every_kind_is_valid():
    assert {p.kind for p in parameters().values()} == set(KINDS)


def test_only_times_have_a_unit():
    for parameter in parameters().values():
        if parameter.kind == "time":
            assert parameter.time_unit in ("s", "m", "h", "d", "w"), parameter
        else:
            assert parameter.time_unit == "", parameter


def test_every_time_default_is_a_number_with_an_optional_unit():
    for parameter in parameters().values():
        if parameter.kind == "time":
            assert re.fullmatch(r"\d+[smhdw]?", normal_value(parameter.default)), parameter


def test_a_time_defaults_unit_is_its_bare_number_unit():
    for parameter in parameters().values():
        if parameter.kind == "time":
            assert normal_value(parameter.default)[-1] == parameter.time_unit, parameter


@pytest.mark.parametrize("kind, pattern", [
    ("bool", r"yes|no"),
    ("size", r"\d+"),
    ("int", r"-?\d+"),
])
def test_simple_kinds_have_defaults_of_their_kind(kind, pattern):
    for parameter in parameters().values():
        if parameter.kind == kind and parameter.default is not None:
            assert re.fullmatch(pattern, normal_value(parameter.default)), parameter


@pytest.mark.parametrize("name, kind", [
    ("mydestination", "list"),
    ("mynetworks", "list"),
    ("smtpd_recipient_restrictions", "list"),
    ("virtual_alias_maps", "list"),
    ("relayhost", "list"),
    ("myorigin", "str"),
    ("html_directory", "str"),
    ("compatibility_level", "str"),
    ("smtpd_tls_received_header", "bool"),
    ("mailbox_size_limit", "size"),
    ("queue_minfree", "size"),
    ("header_size_limit", "size"),
    ("hopcount_limit", "int"),
    ("ipc_idle", "time"),
])
def test_kinds(name, kind):
    assert lookup(name).kind == kind


def test_per_transport_suffixes():
    assert PER_TRANSPORT_SUFFIXES == {
        "delivery_slot_cost", "delivery_slot_discount", "delivery_slot_loan",
        "destination_concurrency_failed_cohort_limit", "destination_concurrency_limit",
        "destination_concurrency_negative_feedback", "destination_concurrency_positive_feedback",
        "destination_rate_delay", "destination_recipient_limit", "extra_recipient_limit",
        "initial_destination_concurrency", "minimum_delivery_slots", "recipient_limit",
        "recipient_refill_delay", "recipient_refill_limit", "time_limit", "transport_rate_delay",
    }


def test_only_pipe_and_spawn_services_get_a_time_limit():
    assert "time_limit" in per_transport_suffixes("pipe")
    assert per_transport_suffixes("spawn") == {"time_limit"}
    assert "time_limit" not in per_transport_suffixes("smtp")
    assert per_transport_suffixes("discard") == frozenset()


def test_the_stock_master_cf_services_have_their_per_transport_parameters():
    assert lookup("relay_destination_concurrency_limit").default == "$default_destination_concurrency_limit"
    assert lookup("local_destination_recipient_limit").default == "1"
    assert lookup("relay_time_limit") is None
    assert lookup("maildrop_destination_recipient_limit") is None  # Debian's master.cf only


def test_any_service_can_have_per_transport_parameters():
    limit = per_transport_parameter("maildrop", "destination_recipient_limit")
    assert (limit.name, limit.default, limit.kind) == (
        "maildrop_destination_recipient_limit", "$default_destination_recipient_limit", "int")
    delay = per_transport_parameter("maildrop", "destination_rate_delay")
    assert (delay.kind, delay.time_unit) == ("time", "s")


def test_legacy_names_are_not_parameters():
    assert "virtual_maps" in LEGACY_NAMES
    assert all(lookup(name) is None for name in LEGACY_NAMES)


def test_the_table_is_built_once():
    assert parameters() is parameters()


def test_importing_does_not_build_the_table():
    code = "import mailferry.config.parameters as p; assert p._table is None"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_data_file_names_the_postfix_it_came_from():
    assert parameters_data.POSTFIX_VERSION.startswith("3.7")


def test_docs_are_up_to_date():
    page = (ROOT / "docs" / "parameters.md").read_text()
    assert page == render_markdown(), "run: python -m mailferry.config.paramdocs > docs/parameters.md"


def test_docs_show_mailferrys_default_next_to_postfixs():
    row = next(line for line in render_markdown().splitlines() if line.startswith("| `config_directory` "))
    assert "`/etc/postfix`" in row and "`/etc/mailferry`" in row
