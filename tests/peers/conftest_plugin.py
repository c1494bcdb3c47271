"""pytest fixtures for real peers. Load with `pytest_plugins = ["tests.peers.conftest_plugin"]`.

peer_ca, untrusted_ca     session-wide throwaway CAs (tests.peers.tls.CA): .cert_path, .issue(),
                          .client_context(); untrusted_ca signed nothing any peer presents
submission_certificate    (cert_path, key_path) for smtp.gmail.test from peer_ca, made once
smtp_sink_factory         make(**SmtpSink options) -> a started SmtpSink (lmtp=, hard_reject=, ...)
smtp_sink                 a started SMTP smtp-sink (tests.peers.smtp_sink.SmtpSink)
lmtp_sink                 a started smtp-sink in LMTP mode (-L)
submission_relay_factory  make(sink=None, **options) -> a started SubmissionRelay; it relays to
                          `sink`, or to a fresh SMTP smtp-sink made for it
submission_relay          a started SubmissionRelay standing in for [smtp.gmail.com]:587
dovecot_lmtp              a started LmtpServer with users alice@example.test and bob@example.test
dns_server_factory        make(**DnsServer records) -> a started dnsmasq (tests.peers.dns.DnsServer)
dns_server                a started DnsServer with tests.peers.dns.DEFAULT_RECORDS: example.test MX
                          10 mx1 (127.0.0.3), 20 mx2 (127.0.0.4); noaddr.test MX to an NXDOMAIN host;
                          nullmx.test null MX; plain.test A 127.0.0.5 and no MX; else NXDOMAIN
slapd_pair                session-wide: two private slapd (tests.peers.slapd.Slapd) with the same
                          directory (the seed's John Smith and the edge-case entries) on two ports.
                          A test that stops or freezes one must restore it (slapd_pair_restored)
slapd_pair_restored       slapd_pair, with both instances running and thawed again after the test
mariadb, postgresql       session-wide: a private MariaDB / PostgreSQL (tests.peers.mariadb,
                          tests.peers.postgresql) holding database `mail`, table `aliases` (the seed's
                          routing as rows) for user postfix. A test that stops one must restore it
                          (mariadb_restored, postgresql_restored)

Every peer is stopped, and its directory removed, on teardown. A peer that cannot start fails.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.peers import peer_tempdir
from tests.peers.dns import DEFAULT_RECORDS, DnsServer
from tests.peers.dovecot import LmtpServer, SubmissionRelay, issue_submission_certificate
from tests.peers.mariadb import MariaDB
from tests.peers.mariadb import load_aliases as load_mariadb_aliases
from tests.peers.postgresql import PostgreSQL
from tests.peers.postgresql import load_aliases as load_postgresql_aliases
from tests.peers.slapd import Slapd
from tests.peers.smtp_sink import SmtpSink
from tests.peers.tls import CA, make_ca


@pytest.fixture(scope="session")
def peer_ca(tmp_path_factory) -> CA:
    return make_ca(tmp_path_factory.mktemp("peer-ca"), name="mailferry test peer CA")


@pytest.fixture(scope="session")
def submission_certificate(peer_ca, tmp_path_factory) -> tuple[Path, Path]:
    """(cert_path, key_path) for smtp.gmail.test (and IP 127.0.0.1, 127.0.0.2), issued by peer_ca once."""
    return issue_submission_certificate(peer_ca, tmp_path_factory.mktemp("submission-tls"))


@pytest.fixture(scope="session")
def untrusted_ca(tmp_path_factory) -> CA:
    return make_ca(tmp_path_factory.mktemp("untrusted-ca"), name="unrelated untrusted CA")


class _Peers:
    def __init__(self):
        self.started: list = []
        self.directories: list[Path] = []

    def directory(self, prefix: str) -> Path:
        path = peer_tempdir(prefix)
        self.directories.append(path)
        return path

    def start(self, peer):
        self.started.append(peer)
        return peer.start()

    def close(self) -> None:
        errors = []
        for peer in reversed(self.started):
            try:
                peer.stop()
            except Exception as error:  # stop the others anyway
                errors.append(error)
        for path in self.directories:
            shutil.rmtree(path, ignore_errors=True)
        if errors:
            raise errors[0]


@pytest.fixture
def _peers():
    peers = _Peers()
    yield peers
    peers.close()


@pytest.fixture
def smtp_sink_factory(_peers):
    def make(**options) -> SmtpSink:
        return _peers.start(SmtpSink(_peers.directory("mailferry-sink-"), **options))
    return make


@pytest.fixture
def smtp_sink(smtp_sink_factory) -> SmtpSink:
    return smtp_sink_factory()


@pytest.fixture
def lmtp_sink(smtp_sink_factory) -> SmtpSink:
    return smtp_sink_factory(lmtp=True)


@pytest.fixture
def submission_relay_factory(_peers, smtp_sink_factory, peer_ca, submission_certificate):
    def make(sink: SmtpSink | None = None, **options) -> SubmissionRelay:
        sink = sink if sink is not None else smtp_sink_factory()
        if "hostname" not in options and "host" not in options:
            options.setdefault("certificate", submission_certificate)
        relay = SubmissionRelay(_peers.directory("mailferry-submission-"), peer_ca, sink, **options)
        return _peers.start(relay)
    return make


@pytest.fixture
def submission_relay(submission_relay_factory) -> SubmissionRelay:
    return submission_relay_factory()


@pytest.fixture
def dovecot_lmtp(_peers) -> LmtpServer:
    return _peers.start(LmtpServer(_peers.directory("mailferry-lmtp-")))


@pytest.fixture
def dns_server_factory(_peers):
    def make(**records) -> DnsServer:
        return _peers.start(DnsServer(_peers.directory("mailferry-dns-"), **records))
    return make


@pytest.fixture
def dns_server(dns_server_factory) -> DnsServer:
    return dns_server_factory(**DEFAULT_RECORDS)


@pytest.fixture(scope="session")
def slapd_pair() -> tuple[Slapd, Slapd]:
    directories = [peer_tempdir("mailferry-slapd-") for _ in range(2)]
    started: list[Slapd] = []
    try:
        for directory in directories:
            started.append(Slapd(directory).start())
        yield started[0], started[1]
    finally:
        for slapd in started:
            slapd.stop()
        for directory in directories:
            shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def slapd_pair_restored(slapd_pair) -> tuple[Slapd, Slapd]:
    yield slapd_pair
    for slapd in slapd_pair:
        slapd.thaw()
        if not slapd.running:
            slapd.start()


def _database_server(server_class, prefix: str, load):
    """A started server with the seed's aliases loaded; stopped and removed at the end."""
    directory = peer_tempdir(prefix)
    server = server_class(directory)
    try:
        server.start()
        load(server)
        yield server
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)


def _running_again(server):
    yield server
    if not server.running:
        server.start()


@pytest.fixture(scope="session")
def mariadb(peer_ca, tmp_path_factory) -> MariaDB:
    """A started MariaDB holding the `mail` database (aliases) for user postfix, and for
    postfix_tls over TLS only (its certificate: 127.0.0.1, from peer_ca)."""
    certificate, key = peer_ca.issue("localhost", tmp_path_factory.mktemp("mariadb-tls"))
    yield from _database_server(lambda directory: MariaDB(directory, tls=(certificate, key, peer_ca.cert_path)),
                                "mailferry-mariadb-", load_mariadb_aliases)


@pytest.fixture
def mariadb_restored(mariadb) -> MariaDB:
    yield from _running_again(mariadb)


@pytest.fixture(scope="session")
def postgresql() -> PostgreSQL:
    """A started PostgreSQL holding the `mail` database (aliases) for role postfix."""
    yield from _database_server(PostgreSQL, "mailferry-postgresql-", load_postgresql_aliases)


@pytest.fixture
def postgresql_restored(postgresql) -> PostgreSQL:
    yield from _running_again(postgresql)
