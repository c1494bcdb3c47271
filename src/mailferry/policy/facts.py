"""What the restrictions read about a session: one plain record per session.

smtpd fills it in as the session goes (client at connect, helo, sender,
recipient, AUTH, TLS); the engine only reads it. The names follow Postfix's
policy delegation attributes (SMTPD_POLICY_README), which is also what
check_policy_service sends.
"""

from __future__ import annotations

from dataclasses import dataclass

# How a client name was found (Postfix's SMTPD_PEER_CODE_*).
NAME_OK = "ok"            # the name is known (and, for client_name, verified forward)
NAME_TEMPFAIL = "tempfail"  # a DNS lookup failed for now
NAME_UNKNOWN = "unknown"  # no name: a permanent failure
NAME_FORGED = "forged"    # a reverse name whose forward lookup does not give the address back

UNKNOWN = "unknown"


@dataclass(slots=True)
class SessionFacts:
    client_address: str
    client_port: int = 0
    client_name: str = UNKNOWN            # verified: reverse name whose forward lookup gives the address
    reverse_client_name: str = UNKNOWN    # the PTR name, unverified
    client_name_status: str = NAME_UNKNOWN
    reverse_name_status: str = NAME_UNKNOWN
    server_address: str = ""
    server_port: int = 0
    in_mynetworks: bool = False
    helo_name: str | None = None          # None: no HELO/EHLO yet
    protocol: str = "SMTP"                # SMTP or ESMTP (the policy attribute)
    sender: str | None = None             # None: no MAIL yet; "" the null sender
    recipient: str | None = None          # the recipient being judged
    recipient_routed: bool = False        # sender-specified routing as the client wrote it (<@hop:u@d>, quoted %!@)
    recipient_count: int = 0              # accepted recipients in this transaction
    queue_id: str = ""
    size: int = 0                         # MAIL SIZE=, then the real size at end of data
    sasl_method: str = ""                 # set by the auth helper after AUTH
    sasl_username: str = ""
    sasl_sender: str = ""
    tls_protocol: str = ""
    tls_cipher: str = ""
    tls_cipher_bits: int = 0
    improper_pipelining: bool = False     # the client talked ahead where not allowed
    smtputf8: bool = False
    instance: str = ""                    # one value per transaction, for policy servers
    stage: str = "CONNECT"                # Postfix's "where": CONNECT, HELO, MAIL, RCPT, DATA, END-OF-MESSAGE

    @property
    def client(self) -> str:
        """name[address], as Postfix's logs and replies show the client."""
        return f"{self.client_name}[{self.client_address}]"

    def start_transaction(self, sender: str, instance: str) -> None:
        self.sender = sender
        self.recipient = None
        self.recipient_count = 0
        self.queue_id = ""
        self.size = 0
        self.instance = instance

    def end_transaction(self) -> None:
        self.sender = None
        self.recipient = None
        self.recipient_count = 0
        self.queue_id = ""
        self.size = 0
