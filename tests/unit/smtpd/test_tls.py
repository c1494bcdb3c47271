"""smtpd/tls.py: the server context a service's parameters make, checked by real handshakes
between it and a client context over memory BIOs (no sockets), and the log lines."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from mailferry.config.config import Config
from mailferry.config.maincf import parse_main_cf
from mailferry.smtpd.tls import (
    TLSSetupError, TlsSettings, established_lines, server_context, sni_match, tls_level,
)
from tests.peers.tls import make_ca


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    directory = tmp_path_factory.mktemp("smtpd-tls")
    ca = make_ca(directory / "ca")
    cert, key = ca.issue("mx.example.test", directory / "mx")
    other_cert, other_key = ca.issue("mail.other.test", directory / "other")
    client_ca = make_ca(directory / "client-ca", name="client CA")
    client_cert, client_key = client_ca.issue("laptop.example.test", directory / "laptop", purpose="clientAuth")
    return {"ca": ca, "cert": cert, "key": key, "other": (other_cert, other_key), "client_ca": client_ca,
            "client": (client_cert, client_key), "dir": directory}


def config(tmp_path: Path, text: str, **overrides: str) -> Config:
    base = Config(str(tmp_path), parse_main_cf(text, str(tmp_path / "main.cf")))
    return base.with_overrides(overrides, "master.cf, line 9") if overrides else base


def tls_main_cf(pki, extra: str = "") -> str:
    return (f"smtpd_tls_security_level = may\nsmtpd_tls_cert_file = {pki['cert']}\n"
            f"smtpd_tls_key_file = {pki['key']}\n{extra}")


def client(maximum=None, ciphers=None, cert=None, sni="mx.example.test") -> tuple[ssl.SSLContext, str]:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if maximum:
        context.maximum_version = maximum
    if ciphers:
        context.set_ciphers(ciphers)
    if cert:
        context.load_cert_chain(*cert)
    return context, sni


def handshake(server: ssl.SSLContext, client_side: tuple[ssl.SSLContext, str]):
    """Pump a handshake between the two contexts; (server SSLObject, client SSLObject)."""
    context, sni = client_side
    s_in, s_out, c_in, c_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    server_side = server.wrap_bio(s_in, s_out, server_side=True)
    client_obj = context.wrap_bio(c_in, c_out, server_hostname=sni)
    done = {"server": False, "client": False}
    for _ in range(20):
        for name, obj in (("client", client_obj), ("server", server_side)):
            if not done[name]:
                try:
                    obj.do_handshake()
                    done[name] = True
                except ssl.SSLWantReadError:
                    pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if all(done.values()):
            # TLS 1.3: the server reads the client's Finished (and certificate) on its next read.
            try:
                server_side.read(1)
            except ssl.SSLWantReadError:
                pass
            return server_side, client_obj
    raise AssertionError("the handshake did not finish")


def test_no_certificate_no_context(tmp_path):
    assert server_context(config(tmp_path, "smtpd_tls_security_level = may\n")) is None


def test_wrappermode_means_encrypt(tmp_path, pki):
    view = config(tmp_path, tls_main_cf(pki).replace("= may", "= none"), smtpd_tls_wrappermode="yes")
    assert tls_level(view) == "encrypt"
    assert server_context(view) is not None  # TLS is on for port 465 even where main.cf says none
    assert TlsSettings.from_config(view).wrappermode


def test_default_context_speaks_tls13(tmp_path, pki):
    server_side, _ = handshake(server_context(config(tmp_path, tls_main_cf(pki))), client())
    assert server_side.version() == "TLSv1.3"


def test_protocols_at_may_and_mandatory_protocols_at_encrypt(tmp_path, pki):
    main = tls_main_cf(pki, "smtpd_tls_protocols = !SSLv2, !SSLv3, !TLSv1, !TLSv1.1, !TLSv1.3\n"
                            "smtpd_tls_mandatory_protocols = >=TLSv1.3\n")
    may = server_context(config(tmp_path, main))
    assert handshake(may, client())[0].version() == "TLSv1.2"
    encrypt = server_context(config(tmp_path, main, smtpd_tls_security_level="encrypt"))
    assert handshake(encrypt, client())[0].version() == "TLSv1.3"
    with pytest.raises(ssl.SSLError):
        handshake(encrypt, client(maximum=ssl.TLSVersion.TLSv1_2))


def test_exclude_ciphers_removes_them_from_tls12(tmp_path, pki):
    main = tls_main_cf(pki, "smtpd_tls_exclude_ciphers = AES256, CHACHA20\nsmtpd_tls_protocols = <=TLSv1.2\n")
    server_side, _ = handshake(server_context(config(tmp_path, main)), client())
    name = server_side.cipher()[0]
    assert "AES128" in name, name
    with pytest.raises(ssl.SSLError):
        handshake(server_context(config(tmp_path, main)), client(ciphers="ECDHE-RSA-AES256-GCM-SHA384"))


def test_preempt_cipherlist_makes_the_server_choose(tmp_path, pki):
    main = tls_main_cf(pki, "smtpd_tls_protocols = <=TLSv1.2\n")
    # The client prefers AES128; the server's list (HIGH by strength) puts AES256 first.
    prefers_128 = "ECDHE-RSA-AES128-GCM-SHA256:ECDHE-RSA-AES256-GCM-SHA384"
    assert "AES128" in handshake(server_context(config(tmp_path, main)), client(ciphers=prefers_128))[0].cipher()[0]
    preempt = server_context(config(tmp_path, main + "tls_preempt_cipherlist = yes\n"))
    assert "AES256" in handshake(preempt, client(ciphers=prefers_128))[0].cipher()[0]


def test_ssl_options_and_zero_session_timeout(tmp_path, pki):
    context = server_context(config(tmp_path, tls_main_cf(pki, "tls_ssl_options = NO_COMPRESSION, 0x40000000\n")))
    assert context.options & ssl.OP_NO_COMPRESSION and context.options & ssl.OP_NO_RENEGOTIATION
    off = server_context(config(tmp_path, tls_main_cf(pki, "smtpd_tls_session_cache_timeout = 0\n")))
    assert off.options & ssl.OP_NO_TICKET and off.num_tickets == 0


@pytest.mark.parametrize("setting, message", [
    ("smtpd_tls_protocols = !TLSv1.2, !TLSv1.3, !TLSv1, !TLSv1.1, !SSLv3, !SSLv2", "no TLS protocol"),
    ("smtpd_tls_ciphers = superb", "unknown cipher grade 'superb'"),
    ("smtpd_tls_exclude_ciphers = ALL", "OpenSSL selects no TLS 1.2 cipher"),
    ("tls_ssl_options = NO_SUCH_THING", "unknown SSL option 'NO_SUCH_THING'"),
    ("smtpd_tls_eecdh_grade = extreme", "unknown EECDH grade 'extreme'"),
    ("smtpd_tls_dh1024_param_file = /nonexistent/dh.pem", "No such file"),
])
def test_bad_values_name_the_parameter(tmp_path, pki, setting, message):
    with pytest.raises(TLSSetupError) as caught:
        server_context(config(tmp_path, tls_main_cf(pki, setting + "\n")))
    assert setting.split(" = ")[0] in str(caught.value) and message in str(caught.value), str(caught.value)


def test_eecdh_grade_ultra_is_secp384r1(tmp_path, pki):
    context = server_context(config(tmp_path, tls_main_cf(pki, "smtpd_tls_eecdh_grade = ultra\n")))
    server_side, _ = handshake(context, client())  # the client offers secp384r1 among others
    assert server_side.version() == "TLSv1.3"


def test_dh_parameters_enable_dhe(tmp_path, pki):
    import subprocess
    dh = tmp_path / "dh.pem"
    subprocess.run(["openssl", "dhparam", "-dsaparam", "-out", str(dh), "2048"], check=True, capture_output=True)
    main = tls_main_cf(pki, f"smtpd_tls_dh1024_param_file = {dh}\nsmtpd_tls_protocols = <=TLSv1.2\n")
    server_side, _ = handshake(server_context(config(tmp_path, main)), client(ciphers="DHE-RSA-AES128-GCM-SHA256"))
    assert server_side.cipher()[0] == "DHE-RSA-AES128-GCM-SHA256"


def test_ask_ccert_verifies_and_logs_a_trusted_client(tmp_path, pki):
    main = tls_main_cf(pki, f"smtpd_tls_ask_ccert = yes\nsmtpd_tls_CAfile = {pki['client_ca'].cert_path}\n"
                            "smtpd_tls_loglevel = 2\n")
    view = config(tmp_path, main)
    context = server_context(view)
    with_cert, _ = handshake(context, client(cert=pki["client"]))
    lines = established_lines("client.example[192.0.2.1]", with_cert, TlsSettings.from_config(view))
    assert lines[0].startswith("client.example[192.0.2.1]: subject_CN=laptop.example.test, "
                               "issuer=client CA, cert fingerprint=")
    assert lines[1].startswith("Trusted TLS connection established from client.example[192.0.2.1]: TLSv1.3 with cipher")
    without, _ = handshake(context, client())  # asked, not required
    assert established_lines("c[192.0.2.1]", without, TlsSettings.from_config(view))[-1].startswith("Anonymous TLS")
    # Python's ssl limit (docs/tls.md): a certificate it cannot verify ends the handshake.
    with pytest.raises(ssl.SSLError):
        handshake(context, client(cert=(pki["cert"], pki["key"])))


def test_loglevel_zero_logs_nothing(tmp_path, pki):
    view = config(tmp_path, tls_main_cf(pki))
    server_side, _ = handshake(server_context(view), client())
    assert established_lines("c[192.0.2.1]", server_side, TlsSettings.from_config(view)) == []
    view = config(tmp_path, tls_main_cf(pki, "smtpd_tls_loglevel = 1\n"))
    server_side, _ = handshake(server_context(view), client())
    [line] = established_lines("c[192.0.2.1]", server_side, TlsSettings.from_config(view))
    assert line.startswith("Anonymous TLS connection established from c[192.0.2.1]: TLSv1.3 with cipher TLS_")


def test_sni_maps_choose_the_chain_by_name(tmp_path, pki):
    other_cert, other_key = pki["other"]
    chain = tmp_path / "other-chain.pem"
    chain.write_text(Path(other_key).read_text() + Path(other_cert).read_text())
    (tmp_path / "sni").write_text(f"mail.other.test {chain}\n.other.test {chain}\n")
    view = config(tmp_path, tls_main_cf(pki, f"tls_server_sni_maps = texthash:{tmp_path}/sni\n"
                                               "smtpd_tls_loglevel = 1\n"))
    context = server_context(view)
    settings = TlsSettings.from_config(view)

    def served_name(sni: str) -> tuple[str, list[str]]:
        server_side, client_obj = handshake(context, client(sni=sni))
        der = client_obj.getpeercert(binary_form=True)
        pem = ssl.DER_cert_to_PEM_cert(der)
        name = "mail.other.test" if pem.strip() == Path(other_cert).read_text().strip() else "mx.example.test"
        return name, established_lines("c[192.0.2.1]", server_side, settings)

    name, lines = served_name("mail.other.test")
    assert name == "mail.other.test"
    assert " to mail.other.test: TLSv1.3" in lines[-1]
    assert served_name("smtp.other.test")[0] == "mail.other.test"   # the .other.test entry
    name, lines = served_name("unknown.example")
    assert name == "mx.example.test"
    assert lines[0] == "TLS SNI unknown.example from c[192.0.2.1] not matched, using default chain"


def test_sni_lookup_order():
    names = {"a.example": 1, ".example": 2}
    assert sni_match(names, "A.Example") == 1
    assert sni_match(names, "b.a.example") == 2
    assert sni_match(names, "example") is None
