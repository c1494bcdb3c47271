"""Next hops as Postfix writes them, for SMTP and LMTP."""

import pytest

from mailferry.delivery.nexthop import Hop, parse_hop


@pytest.mark.parametrize("written, lmtp, expected", [
    ("[smtp.gmail.com]:587", False, Hop("[smtp.gmail.com]:587", "smtp.gmail.com", 587, False, bracketed=True)),
    ("[192.0.2.1]", False, Hop("[192.0.2.1]", "192.0.2.1", 25, False, bracketed=True)),
    ("[ipv6:2001:db8::1]:2525", False, Hop("[ipv6:2001:db8::1]:2525", "2001:db8::1", 2525, False, bracketed=True)),
    ("Example.COM", False, Hop("Example.COM", "example.com", 25, True)),
    ("example.com:2525", False, Hop("example.com:2525", "example.com", 2525, True)),
    ("example.com:submission", False, Hop("example.com:submission", "example.com", 587, True)),
    ("unix:/var/run/dovecot/lmtp", True, Hop("unix:/var/run/dovecot/lmtp", "/var/run/dovecot/lmtp", None,
                                             False, unix=True)),
    ("inet:[127.0.0.1]:24", True, Hop("inet:[127.0.0.1]:24", "127.0.0.1", 24, False, bracketed=True)),
    ("inet:mailstore.example:2003", True, Hop("inet:mailstore.example:2003", "mailstore.example", 2003, False)),
    ("mailstore.example", True, Hop("mailstore.example", "mailstore.example", 24, False)),
])
def test_next_hops_as_postfix_writes_them(written, lmtp, expected):
    assert parse_hop(written, lmtp) == expected


def test_an_unknown_port_name_is_named():
    with pytest.raises(ValueError, match="unknown port 'nosuchservice'"):
        parse_hop("[mx.example]:nosuchservice", False)
