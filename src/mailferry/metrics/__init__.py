"""Prometheus metrics (docs/metrics.md): counts summed over every process of the daemon.

Off unless `mailferry_metrics_listen` is set: then every hook below returns
at its first line, and tables are not wrapped at all (tables/timing.py).

mailferry is several processes: the master (queue manager, pickup, the
delivery agents, smtpd) and forked smtpd workers (smtpd, cleanup, table
lookups). A scrape must see their sum, so prometheus-client's multiprocess
mode is used: each process writes its values into its own memory-mapped
file in a private directory ($queue_directory/metrics, emptied at start),
and the master's endpoint (metrics/endpoint.py) adds the files up at each
scrape. An increment is a store into the mapping under a lock: no system
call (a new label value, a new key, may grow the file once). The process
identifier that names the files is kept in a variable refreshed after
fork(), so that not even getpid() runs per increment.

A worker that dies keeps its counts (its file stays); its share of the
current sessions gauge is dropped (`process_gone`). A reload changes
nothing here: the files, and so the counts, stay.

The hooks are called at ONE place each, where the log line they count is
written (docs/metrics.md names the lines).
"""

from __future__ import annotations

import glob
import os

# prometheus-client is imported by the functions that need it: it takes 0.1 s, which
# `postmap -q` and sendmail, which open tables (tables/timing.py), must not pay. The
# daemon has it loaded before it gives up root (metrics/endpoint.py imports it).

_enabled = False
_directory = ""
_process_id = 0
_on_fork_in_child: list = []
_fork_hook_registered = False

# Delivery takes from milliseconds (a sink next door) to days (a deferred message).
DELAY_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 14400, 86400, 432000)
# A lookup takes microseconds (an indexed file) to seconds (an LDAP server that does not answer).
LOOKUP_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)

_metrics: dict = {}
_children: dict = {}       # (metric, labels) -> child: skips the library's label checks on each event


def enabled() -> bool:
    return _enabled


def directory() -> str:
    return _directory


def enable(path: str) -> None:
    """Turn metrics on in this process (and the processes it forks), their files under
    `path`, which is emptied: counts start at zero with each start of the daemon."""
    global _enabled, _directory, _process_id, _fork_hook_registered
    os.makedirs(path, mode=0o750, exist_ok=True)
    for stale in glob.glob(os.path.join(path, "*.db")):
        os.remove(stale)
    _directory = path
    # Read by prometheus-client's multiprocess value when it opens a file; delivery commands
    # never see it (pipe(8) passes export_environment only).
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
    _process_id = os.getpid()
    from prometheus_client import values
    values.ValueClass = values.MultiProcessValue(lambda: _process_id)
    # New metric objects, whose values the class just set makes (the daemon enables once;
    # a test may enable again with another directory).
    _define()
    _children.clear()
    if not _fork_hook_registered:
        os.register_at_fork(after_in_child=_after_fork)
        _fork_hook_registered = True
    _enabled = True


def on_fork_in_child(action) -> None:
    """`action()` runs in each child forked after metrics are on (the endpoint closes its socket)."""
    _on_fork_in_child.append(action)


def _after_fork() -> None:
    global _process_id
    if not _enabled:
        return
    _process_id = os.getpid()
    for action in _on_fork_in_child:
        action()


def process_gone(pid: int) -> None:
    """A worker died: its sessions are over (its counters stay in the sum)."""
    if _enabled:
        from prometheus_client.multiprocess import mark_process_dead
        mark_process_dead(pid, _directory)


def _define() -> None:
    """The metrics, named after the postfix_exporter's where it has one (docs/metrics.md).
    In no registry: the endpoint reads the processes' files, not these objects."""
    from prometheus_client import Counter, Gauge, Histogram
    kinds = {"counter": Counter, "gauge": Gauge, "histogram": Histogram}
    for key, kind, name, text, labels, options in _DEFINITIONS:
        _metrics[key] = kinds[kind](name, text, labels, registry=None, **options)


_DEFINITIONS = (
    ("connects", "counter", "mailferry_smtpd_connects_total",
     "SMTP connections accepted, by master.cf service", ["service"], {}),
    ("sessions", "gauge", "mailferry_smtpd_sessions",
     "SMTP sessions open now, by master.cf service", ["service"], {"multiprocess_mode": "livesum"}),
    ("received", "counter", "mailferry_messages_received_total",
     "Messages queued by cleanup, by source (smtpd, pickup)", ["source"], {}),
    ("status", "counter", "mailferry_delivery_status_total",
     "Recipient deliveries, by transport and status (sent, deferred, bounced)", ["transport", "status"], {}),
    ("delay", "histogram", "mailferry_delivery_delay_seconds",
     "Seconds from queueing to delivery of a recipient (status=sent), by transport", ["transport"],
     {"buckets": DELAY_BUCKETS}),
    ("lookup", "histogram", "mailferry_table_lookup_duration_seconds",
     "Seconds a table lookup took, by table (type:name)", ["table"], {"buckets": LOOKUP_BUCKETS}),
    ("ldap", "counter", "mailferry_ldap_server_failures_total",
     "LDAP servers that failed during a lookup and were taken out of rotation (the next "
     "server_host was tried), by table and server", ["table", "server"], {}),
    ("smtpd_tls", "counter", "mailferry_smtpd_tls_connections_total",
     "Inbound TLS handshakes, by trust (trusted, anonymous, failed) and protocol", ["trust", "protocol"], {}),
    ("smtp_tls", "counter", "mailferry_smtp_tls_connections_total",
     "Outbound TLS handshakes, by trust (verified, untrusted, failed) and protocol", ["trust", "protocol"], {}),
    ("auth", "counter", "mailferry_smtpd_sasl_authentication_failures_total",
     "Failed SMTP AUTH logins (smtpd), by SASL mechanism", ["mechanism"], {}),
)


def _child(name: str, *labels: str):
    key = (name, labels)
    child = _children.get(key)
    if child is None:
        child = _children[key] = _metrics[name].labels(*labels)
    return child


# --- the hooks ----------------------------------------------------------------------------

def connection_opened(service: str) -> None:
    """smtpd: a connection accepted (`connect from`), and one more session open."""
    if _enabled:
        _child("connects", service).inc()
        _child("sessions", service).inc()


def connection_closed(service: str) -> None:
    """smtpd: `disconnect from`."""
    if _enabled:
        _child("sessions", service).dec()


def message_received(origin: str) -> None:
    """cleanup: a message is in the queue (its `message-id=` line); origin "smtp" or "local"."""
    if _enabled:
        _child("received", "pickup" if origin == "local" else "smtpd").inc()


def delivery_outcome(transport: str, status: str, seconds_since_queued: float) -> None:
    """qmgr: one recipient's `status=sent|deferred|bounced` line."""
    if _enabled:
        _child("status", transport, status).inc()
        if status == "sent":
            _child("delay", transport).observe(seconds_since_queued)


def lookup_timer(table: str):
    """The histogram child a table's lookups are observed into (tables/timing.py)."""
    return _child("lookup", table)


def ldap_server_failed(table: str, server: str) -> None:
    """tables/ldap: `dict_ldap_lookup: ...: server URL failed: ...; out of rotation`."""
    if _enabled:
        _child("ldap", table, server).inc()


def tls_inbound(trust: str, protocol: str = "") -> None:
    """smtpd: `Trusted|Anonymous TLS connection established from` (`failed`: `SSL_accept error`)."""
    if _enabled:
        _child("smtpd_tls", trust.lower(), protocol).inc()


def tls_outbound(trust: str, protocol: str = "") -> None:
    """smtp/lmtp: `Verified|Untrusted TLS connection established to` (`failed`: the handshake or
    the certificate check failed, and the delivery was deferred)."""
    if _enabled:
        _child("smtp_tls", trust.lower(), protocol).inc()


# A client names any mechanism it likes: others are counted as "other", so that a client
# cannot make a new time series with each AUTH.
SASL_MECHANISMS = frozenset({"PLAIN", "LOGIN", "CRAM-MD5", "DIGEST-MD5", "SCRAM-SHA-1", "SCRAM-SHA-256",
                             "XOAUTH2", "OAUTHBEARER", "EXTERNAL", "ANONYMOUS", "GSSAPI", "NTLM"})


def auth_failed(mechanism: str) -> None:
    """smtpd: `SASL MECH authentication failed: ...`."""
    if _enabled:
        mechanism = mechanism.upper()
        _child("auth", mechanism if mechanism in SASL_MECHANISMS else "other").inc()
