import socket
import ssl
import threading

import pytest

from mailferry.config import config as config_module
from mailferry.delivery import tls
from mailferry.delivery.tls import (
    TlsPolicy, certificate_matches, client_context, established_line, expected_names, name_mismatch,
    protocol_bounds, server_name, trust_store_description, verification_failure,
)
from mailferry.smtpd import service as smtpd_service
from mailferry.tlsinfo import describe
from tests.peers.tls import make_ca


def load(tmp_path, text):
    (tmp_path / "main.cf").write_text(text)
    return config_module.load(str(tmp_path))


def policy_from(tmp_path, text, prefix="smtp"):
    return TlsPolicy.from_config(load(tmp_path, text), prefix)


# --- policy from main.cf ------------------------------------------------------------------

def test_default_is_no_tls(tmp_path):
    policy = policy_from(tmp_path, "")
    assert policy.level == "none"
    assert not policy.offers_tls and not policy.requires_tls and not policy.verifies


def test_seed_relay_settings(tmp_path):
    policy = policy_from(tmp_path, (
        "relayhost = [smtp.gmail.com]:587\n"
        "smtp_tls_eccert_file =\n"
        "smtp_tls_eckey_file =\n"
        "smtp_tls_security_level = may\n"
        "smtp_tls_CAfile = /etc/postfix/cacert.pem\n"))
    # Postfix's default grade, medium, is tls_medium_cipherlist.
    assert policy == TlsPolicy(level="may", ca_file="/etc/postfix/cacert.pem", protocols=">=TLSv1",
                               ciphers="aNULL:-aNULL:HIGH:MEDIUM:+RC4:@STRENGTH")
    assert policy.offers_tls and not policy.requires_tls and not policy.verifies
    assert policy.cert_file == "" and policy.key_file == ""  # no client certificate by default


def test_seed_inline_comment_names_the_parameter(tmp_path):
    with pytest.raises(ValueError, match=r"line 1: parameter smtp_tls_security_level: unknown security level"):
        policy_from(tmp_path, "smtp_tls_security_level = may # http://www.postfix.org/TLS_README.html\n")


@pytest.mark.parametrize("level", ["dane", "dane-only", "fingerprint"])
def test_dane_and_fingerprint_are_refused_by_name(tmp_path, level):
    with pytest.raises(ValueError, match=rf"parameter smtp_tls_security_level: security level '{level}' "
                                         "is not supported by mailferry"):
        policy_from(tmp_path, f"smtp_tls_security_level = {level}\n")


def test_unknown_level(tmp_path):
    with pytest.raises(ValueError, match="unknown security level 'must'"):
        policy_from(tmp_path, "smtp_tls_security_level = must\n")


@pytest.mark.parametrize("settings, level", [
    ("smtp_use_tls = yes\n", "may"),
    ("smtp_enforce_tls = yes\n", "verify"),
    ("smtp_enforce_tls = yes\nsmtp_tls_enforce_peername = no\n", "encrypt"),
    ("smtp_enforce_tls = yes\nsmtp_tls_security_level = may\n", "may"),  # the new parameter wins
])
def test_obsolete_parameters_apply_only_when_level_is_empty(tmp_path, settings, level):
    assert policy_from(tmp_path, settings).level == level


def test_mandatory_levels_read_mandatory_protocols(tmp_path):
    policy = policy_from(tmp_path, (
        "smtp_tls_security_level = encrypt\n"
        "smtp_tls_protocols = >=TLSv1\n"
        "smtp_tls_mandatory_protocols = >=TLSv1.2\n"))
    assert policy.protocols == ">=TLSv1.2"
    assert policy.requires_tls and not policy.verifies and policy.match == ()


def test_verify_and_secure_match_defaults(tmp_path):
    assert policy_from(tmp_path, "smtp_tls_security_level = verify\n").match == ("hostname",)
    assert policy_from(tmp_path, "smtp_tls_security_level = secure\n").match == ("nexthop", "dot-nexthop")


def test_match_list_accepts_colons_and_literal_names(tmp_path):
    policy = policy_from(tmp_path, ("smtp_tls_security_level = secure\n"
                                    "smtp_tls_secure_cert_match = Example.COM:.example.com, nexthop\n"))
    assert policy.match == ("example.com", ".example.com", "nexthop")


def test_empty_match_list_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="smtp_tls_verify_cert_match: empty"):
        policy_from(tmp_path, "smtp_tls_security_level = verify\nsmtp_tls_verify_cert_match =\n")


def test_bad_protocols_name_the_parameter(tmp_path):
    with pytest.raises(ValueError, match=r"parameter smtp_tls_mandatory_protocols: unknown TLS protocol 'TLSv2'"):
        policy_from(tmp_path, "smtp_tls_security_level = verify\nsmtp_tls_mandatory_protocols = TLSv2\n")


def test_lmtp_prefix_reads_lmtp_parameters(tmp_path):
    policy = policy_from(tmp_path, (
        "smtp_tls_security_level = none\n"
        "lmtp_tls_security_level = secure\n"
        "lmtp_tls_CAfile = /etc/ssl/lmtp-ca.pem\n"
        "lmtp_tls_servername = hostname\n"), prefix="lmtp")
    assert policy.level == "secure" and policy.ca_file == "/etc/ssl/lmtp-ca.pem"
    assert policy.match == ("nexthop",)  # Postfix's lmtp default differs from smtp's
    assert policy.servername == "hostname"
    assert policy.parameter("CAfile") == "lmtp_tls_CAfile"


def test_key_file_defaults_to_cert_file(tmp_path):
    policy = policy_from(tmp_path, "smtp_tls_security_level = may\nsmtp_tls_cert_file = /etc/c.pem\n")
    assert (policy.cert_file, policy.key_file) == ("/etc/c.pem", "/etc/c.pem")


# --- protocol lists ----------------------------------------------------------------------

V = ssl.TLSVersion


@pytest.mark.parametrize("text, bounds", [
    ("", (V.MINIMUM_SUPPORTED, V.MAXIMUM_SUPPORTED)),
    (">=TLSv1", (V.TLSv1, V.MAXIMUM_SUPPORTED)),
    (">=TLSv1.2, <=TLSv1.3", (V.TLSv1_2, V.TLSv1_3)),
    (">=0x0303", (V.TLSv1_2, V.MAXIMUM_SUPPORTED)),
    (">=TLSv1.2 <=0305", (V.TLSv1_2, V.MAXIMUM_SUPPORTED)),  # a future version: no upper bound
    ("!SSLv2, !SSLv3, !TLSv1, !TLSv1.1", (V.TLSv1_2, V.MAXIMUM_SUPPORTED)),
    ("!SSLv2:!SSLv3", (V.TLSv1, V.MAXIMUM_SUPPORTED)),
    ("!SSLv2, !SSLv3, !TLSv1.1", (V.TLSv1, V.TLSv1)),  # a gap ends the range, as in OpenSSL
    ("!TLSv1.3", (V.MINIMUM_SUPPORTED, V.TLSv1_2)),
    ("TLSv1.2, TLSv1.3", (V.TLSv1_2, V.TLSv1_3)),
    (">=tlsv1.1", (V.TLSv1_1, V.MAXIMUM_SUPPORTED)),
])
def test_protocol_bounds(text, bounds):
    assert protocol_bounds(text) == bounds


@pytest.mark.parametrize("text, message", [
    ("TLSv2", "unknown TLS protocol 'TLSv2'"),
    (">=0x0305", "unknown to this OpenSSL"),
    (">=TLSv1.3, <=TLSv1.2", "leaves no TLS protocol version enabled"),
    (">=fast", "unknown TLS protocol version in '>=fast'"),
])
def test_protocol_errors(text, message):
    with pytest.raises(ValueError, match=message):
        protocol_bounds(text)


# --- contexts ------------------------------------------------------------------------------

def test_verify_context_requires_a_certificate_and_matches_names_itself(tmp_path):
    ca = make_ca(tmp_path / "ca")
    context = client_context(TlsPolicy("verify", ca_file=str(ca.cert_path), match=("hostname",),
                                       protocols=">=TLSv1.2"))
    assert context.verify_mode == ssl.CERT_REQUIRED and not context.check_hostname
    assert [cert["subject"] for cert in context.get_ca_certs()] == [((("commonName", "mailferry test CA"),),)]
    assert context.minimum_version == V.TLSv1_2


@pytest.mark.parametrize("level", ["may", "encrypt"])
def test_unverified_levels_skip_certificate_checks(level):
    context = client_context(TlsPolicy(level, protocols=">=TLSv1"))
    assert context.verify_mode == ssl.CERT_NONE and not context.check_hostname
    assert context.minimum_version == V.TLSv1


def test_verify_without_ca_uses_the_system_store(monkeypatch):
    calls = []
    monkeypatch.setattr(ssl.SSLContext, "set_default_verify_paths", lambda self: calls.append(self))
    context = client_context(TlsPolicy("secure", match=("nexthop",), protocols=">=TLSv1.2 <=TLSv1.3"))
    assert calls == [context]
    assert context.maximum_version == V.TLSv1_3


def test_contexts_are_cached_per_policy():
    policy = TlsPolicy("encrypt", protocols=">=TLSv1.2")
    assert client_context(policy) is client_context(TlsPolicy("encrypt", protocols=">=TLSv1.2"))
    assert client_context(policy) is not client_context(TlsPolicy("may", protocols=">=TLSv1.2"))


def test_unreadable_ca_file_names_the_parameter(tmp_path):
    missing = tmp_path / "nope.pem"
    with pytest.raises(ValueError, match=rf"^smtp_tls_CAfile = {missing}: cannot read: No such file"):
        client_context(TlsPolicy("verify", ca_file=str(missing), match=("hostname",)))


def test_ca_file_without_certificates(tmp_path):
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    with pytest.raises(ValueError, match=rf"^lmtp_tls_CAfile = {junk}: no usable PEM certificate"):
        client_context(TlsPolicy("secure", ca_file=str(junk), match=("nexthop",), parameter_prefix="lmtp"))


def test_ca_path_must_be_a_directory(tmp_path):
    with pytest.raises(ValueError, match="smtp_tls_CApath = .*: not a directory"):
        client_context(TlsPolicy("verify", ca_path=str(tmp_path / "absent"), match=("hostname",)))


def test_bad_protocols_in_context_name_the_parameter():
    with pytest.raises(ValueError, match=r"^smtp_tls_protocols = SSLv4: unknown"):
        client_context(TlsPolicy("may", protocols="SSLv4"))


def test_no_context_for_level_none():
    with pytest.raises(ValueError, match="smtp_tls_security_level = none"):
        client_context(TlsPolicy("none"))


def test_client_certificate_only_when_configured(tmp_path):
    ca = make_ca(tmp_path / "ca")
    cert, key = ca.issue("client.example.test", tmp_path / "client")
    client_context(TlsPolicy("encrypt", cert_file=str(cert), key_file=str(key)))
    with pytest.raises(ValueError, match=r"^smtp_tls_key_file = .*absent.key: cannot read"):
        client_context(TlsPolicy("encrypt", cert_file=str(cert), key_file=str(tmp_path / "absent.key")))
    # The cert file alone holds no key: key_file defaults to cert_file, which fails to load.
    with pytest.raises(ValueError, match="cannot load the client certificate and key"):
        client_context(TlsPolicy("encrypt", cert_file=str(cert)))


def test_trust_store_description(monkeypatch):
    assert trust_store_description(TlsPolicy("verify", ca_file="/etc/postfix/cacert.pem")) == \
        "CAfile /etc/postfix/cacert.pem"
    assert trust_store_description(TlsPolicy("verify", ca_path="/etc/ssl/certs")) == "CApath /etc/ssl/certs"
    paths = ssl.DefaultVerifyPaths("/usr/lib/ssl/cert.pem", "/usr/lib/ssl/certs", "SSL_CERT_FILE",
                                   "/usr/lib/ssl/cert.pem", "SSL_CERT_DIR", "/usr/lib/ssl/certs")
    monkeypatch.setattr(ssl, "get_default_verify_paths", lambda: paths)
    assert trust_store_description(TlsPolicy("verify")) == \
        "the system trust store (/usr/lib/ssl/cert.pem, /usr/lib/ssl/certs)"
    empty = paths._replace(cafile=None, capath=None)
    monkeypatch.setattr(ssl, "get_default_verify_paths", lambda: empty)
    assert "empty: neither /usr/lib/ssl/cert.pem nor /usr/lib/ssl/certs exists" in \
        trust_store_description(TlsPolicy("verify"))


# --- names -------------------------------------------------------------------------------

@pytest.mark.parametrize("servername, expected", [
    ("", None),
    ("hostname", "mx1.example.com"),
    ("nexthop", "example.com"),
    ("smtp.relay.test", "smtp.relay.test"),
])
def test_server_name(servername, expected):
    assert server_name(TlsPolicy("may", servername=servername), "example.com", "mx1.example.com") == expected


def test_server_name_is_never_an_ip_address():
    policy = TlsPolicy("may", servername="nexthop")
    assert server_name(policy, "[192.0.2.1]", "192.0.2.1") is None
    assert server_name(policy, "[ipv6:2001:db8::1]", "2001:db8::1") is None
    assert server_name(TlsPolicy("may", servername="hostname"), "example.com", "2001:db8::1") is None
    assert server_name(policy, "[smtp.gmail.com]:587", "smtp.gmail.com") == "smtp.gmail.com"


def test_expected_names():
    secure = TlsPolicy("secure", match=("nexthop", "dot-nexthop"))
    assert expected_names(secure, "example.com", "mx1.mail.test") == ["example.com", ".example.com"]
    verify = TlsPolicy("verify", match=("hostname", "nexthop", "example.net", ".example.net"))
    assert expected_names(verify, "smtp.gmail.com", "smtp.gmail.com") == \
        ["smtp.gmail.com", "example.net", ".example.net"]  # hostname and nexthop coincide: listed once


def cert(*dns, cn=None, ips=()):
    certificate = {"subjectAltName": tuple(("DNS", name) for name in dns) + tuple(("IP Address", ip) for ip in ips)}
    if cn:
        certificate["subject"] = ((("countryName", "US"),), (("commonName", cn),))
    return certificate


@pytest.mark.parametrize("certificate, names, matches", [
    (cert("smtp.gmail.com"), ["smtp.gmail.com"], True),
    (cert("SMTP.Gmail.COM"), ["smtp.gmail.com."], True),
    (cert("smtp.gmail.com"), ["gmail.com"], False),
    # a wildcard covers exactly one left-most label
    (cert("*.gmail.com"), ["smtp.gmail.com"], True),
    (cert("*.gmail.com"), ["a.smtp.gmail.com"], False),
    (cert("*.gmail.com"), ["gmail.com"], False),
    (cert("*.com"), ["gmail.com"], False),
    (cert("mx*.gmail.com"), ["mx1.gmail.com"], False),
    # ".domain" (dot-nexthop) is any subdomain, not the domain itself
    (cert("mx1.mail.example.com"), [".example.com"], True),
    (cert("example.com"), [".example.com"], False),
    (cert("badexample.com"), [".example.com"], False),
    (cert("*.example.com"), [".example.com"], True),
    (cert("*.mail.example.com"), [".example.com"], True),
    (cert("example.com"), ["example.com", ".example.com"], True),
    # CN only when there is no DNS subjectAltName
    (cert(cn="smtp.gmail.com"), ["smtp.gmail.com"], True),
    (cert("mx.other.test", cn="smtp.gmail.com"), ["smtp.gmail.com"], False),
    (cert(cn="smtp.gmail.com", ips=("127.0.0.1",)), ["smtp.gmail.com"], True),
    # an IP-literal next hop is matched against IP subjectAltNames
    (cert("smtp.gmail.test", ips=("127.0.0.1",)), ["127.0.0.1"], True),
    ({}, ["smtp.gmail.com"], False),
])
def test_certificate_matches(certificate, names, matches):
    assert certificate_matches(certificate, names) is matches


def test_name_mismatch_text():
    text = name_mismatch("smtp.gmail.com", "192.0.2.1", 587, ["smtp.gmail.com", ".gmail.com"],
                         cert("mx.other.test", "*.other.test"))
    assert text == ("server certificate verification failed for smtp.gmail.com[192.0.2.1]:587: "
                    "certificate names mx.other.test, *.other.test do not match smtp.gmail.com or .gmail.com")


def verify_error(code, message):
    error = ssl.SSLCertVerificationError(1, f"[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: {message}")
    error.verify_code, error.verify_message = code, message
    return error


@pytest.mark.parametrize("code, message, text", [
    (10, "certificate has expired", "certificate has expired"),
    (9, "certificate is not yet valid", "certificate is not yet valid"),
    (2, "unable to get issuer certificate", "untrusted issuer (unable to get issuer certificate)"),
    (7, "certificate signature failure", "certificate signature failure"),
])
def test_verification_failure_texts(code, message, text):
    assert verification_failure(verify_error(code, message), "smtp.gmail.com", "192.0.2.1", 587) == \
        f"certificate verification failed for smtp.gmail.com[192.0.2.1]:587: {text}"


def test_established_line_rejects_unknown_trust():
    with pytest.raises(ValueError, match="Verified, Trusted, Untrusted, Anonymous"):
        established_line("Secure", "h", "a", 25, None)


# --- real handshakes ------------------------------------------------------------------------

class TlsServer:
    """A TLS server on 127.0.0.1 that completes one handshake per connection, in a thread."""

    def __init__(self, cert, key):
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(str(cert), str(key))
        self.server_names: list[str | None] = []
        self.context.sni_callback = lambda _sock, name, _ctx: self.server_names.append(name)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.stopping = False
        self.port = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            if self.stopping:
                connection.close()
                return
            with connection:
                connection.settimeout(10)
                try:
                    with self.context.wrap_socket(connection, server_side=True) as tls_connection:
                        tls_connection.recv(1)  # until the client closes
                except (ssl.SSLError, OSError):
                    pass

    def close(self):
        self.stopping = True
        socket.create_connection(("127.0.0.1", self.port), timeout=10).close()  # wakes accept()
        self.listener.close()
        self.thread.join(10)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("pki")
    ca = make_ca(tmp_path / "ca")
    other_ca = make_ca(tmp_path / "other-ca", name="unrelated CA")
    cert, key = ca.issue("smtp.gmail.test", tmp_path / "server")
    return ca, other_ca, cert, key


@pytest.fixture
def server(pki):
    _, _, cert, key = pki
    tls_server = TlsServer(cert, key)
    yield tls_server
    tls_server.close()


def handshake(policy, port, sni=None):
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        return client_context(policy).wrap_socket(raw, server_hostname=sni)
    except BaseException:
        raw.close()
        raise


def test_verified_handshake_with_the_right_ca(pki, server):
    ca, _, _, _ = pki
    policy = TlsPolicy("verify", ca_file=str(ca.cert_path), match=("hostname",), protocols=">=TLSv1.2")
    names = expected_names(policy, "smtp.gmail.test", "smtp.gmail.test")
    sni = server_name(TlsPolicy("verify", servername="hostname"), "smtp.gmail.test", "smtp.gmail.test")
    with handshake(policy, server.port, sni) as connection:
        peer = connection.getpeercert()
        assert certificate_matches(peer, names)
        assert not certificate_matches(peer, ["smtp.gmail.com"])
        line = established_line("Verified", "smtp.gmail.test", "127.0.0.1", server.port, connection)
    assert line.startswith(f"Verified TLS connection established to smtp.gmail.test[127.0.0.1]:{server.port}: TLSv1.")
    assert " with cipher " in line and line.endswith(" bits)")
    assert "smtp.gmail.test" in server.server_names


def test_unrelated_ca_is_an_untrusted_issuer(pki, server):
    _, other_ca, _, _ = pki
    policy = TlsPolicy("verify", ca_file=str(other_ca.cert_path), match=("hostname",))
    with pytest.raises(ssl.SSLCertVerificationError) as caught:
        handshake(policy, server.port)
    text = verification_failure(caught.value, "smtp.gmail.test", "127.0.0.1", server.port)
    assert text == (f"certificate verification failed for smtp.gmail.test[127.0.0.1]:{server.port}: "
                    "untrusted issuer (unable to get local issuer certificate)")


def test_self_signed_server_certificate(pki):
    ca, other_ca, _, _ = pki
    self_signed = TlsServer(ca.cert_path, ca.key_path)  # the CA's own certificate, self-signed
    try:
        with pytest.raises(ssl.SSLCertVerificationError) as caught:
            handshake(TlsPolicy("secure", ca_file=str(other_ca.cert_path), match=("nexthop",)), self_signed.port)
    finally:
        self_signed.close()
    text = verification_failure(caught.value, "relay.test", "127.0.0.1", 25)
    assert text == "certificate verification failed for relay.test[127.0.0.1]:25: self-signed certificate"


def test_trusted_chain_with_wrong_name(pki, server):
    ca, _, _, _ = pki
    policy = TlsPolicy("secure", ca_file=str(ca.cert_path), match=("nexthop", "dot-nexthop"))
    names = expected_names(policy, "gmail.com", "smtp.gmail.test")
    with handshake(policy, server.port) as connection:
        peer = connection.getpeercert()
    assert not certificate_matches(peer, names)
    assert name_mismatch("smtp.gmail.test", "127.0.0.1", 25, names, peer).endswith(
        "certificate names smtp.gmail.test do not match gmail.com or .gmail.com")


def test_may_handshake_does_not_check_the_certificate(pki, server):
    _ = pki
    with handshake(TlsPolicy("may", protocols=">=TLSv1"), server.port) as connection:
        assert connection.getpeercert() == {}  # nothing was verified, so nothing is reported
        assert connection.getpeercert(binary_form=True)  # but the server did present one
        line = established_line("Untrusted", "smtp.gmail.test", "127.0.0.1", 587, connection)
    assert line.startswith("Untrusted TLS connection established to smtp.gmail.test[127.0.0.1]:587: TLSv1.")
    assert server.server_names == [None]  # no SNI by default


def test_client_and_server_share_one_describe():
    assert tls.describe is describe
    assert smtpd_service.describe is describe


# --- cipher grades and exclusions (smtp_tls_ciphers at may, the mandatory ones above it)

def test_the_cipher_grade_follows_the_level(tmp_path):
    may = policy_from(tmp_path, "smtp_tls_security_level = may\nsmtp_tls_ciphers = high\n"
                                "smtp_tls_exclude_ciphers = AES256\nsmtp_tls_mandatory_exclude_ciphers = CAMELLIA\n")
    assert may.ciphers == "aNULL:-aNULL:HIGH:@STRENGTH:!AES256"
    encrypt = policy_from(tmp_path, "smtp_tls_security_level = encrypt\nsmtp_tls_mandatory_ciphers = high\n"
                                    "smtp_tls_exclude_ciphers = AES256\nsmtp_tls_mandatory_exclude_ciphers = CAMELLIA\n")
    assert encrypt.ciphers == "aNULL:-aNULL:HIGH:@STRENGTH:!AES256:!CAMELLIA"
    context = client_context(encrypt)
    names = {cipher["name"] for cipher in context.get_ciphers() if cipher["protocol"] == "TLSv1.2"}
    assert names and not any("AES256" in name or "CAMELLIA" in name for name in names)


def test_lmtp_reads_its_own_cipher_parameters(tmp_path):
    policy = policy_from(tmp_path, "lmtp_tls_security_level = may\nlmtp_tls_ciphers = high\n", prefix="lmtp")
    assert policy.ciphers == "aNULL:-aNULL:HIGH:@STRENGTH"


def test_an_unknown_grade_names_the_parameter(tmp_path):
    with pytest.raises(ValueError, match=r"smtp_tls_ciphers: unknown cipher grade 'best'"):
        policy_from(tmp_path, "smtp_tls_security_level = may\nsmtp_tls_ciphers = best\n")
