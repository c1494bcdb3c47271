"""How the fuzzers answer the server state machine's decisions (hypothesis and atheris alike):
`choice` (0-3, drawn from the input) picks a refusal, a 421, a SASL challenge or a yes, so every
branch of the application's side is taken. A STARTTLS accepted is followed by a handshake that
succeeds. No atheris import here: test_hostile_protocol.py uses it too."""

from mailferry.protocol.server_events import (
    NEED_DATA, AuthRequested, AuthResponse, MessageReceived, StartTLSRequested,
)
from mailferry.protocol.smtp_server import ServerConnection


def decide(conn: ServerConnection, event, choice: int) -> None:
    if isinstance(event, MessageReceived):
        if choice == 0:
            conn.reject(451, "4.3.0", "Error: queue file write error")
        elif choice == 1:
            conn.reject(421, "4.3.0", "mx.example Error: closing")
        else:
            conn.accept_message("4QID")
    elif isinstance(event, (AuthRequested, AuthResponse)):
        if choice == 0:
            conn.auth_challenge("")
        elif choice == 1:
            conn.reject(535, "5.7.8", "Error: authentication failed")
        else:
            conn.accept()
    elif choice == 0:
        conn.reject(550, "5.7.1", "refused")
    elif choice == 1 and not isinstance(event, StartTLSRequested):
        conn.reject(450, "4.7.1", "try later")
    else:
        conn.accept()
        if isinstance(event, StartTLSRequested) and conn.next_event() is NEED_DATA:
            conn.tls_started()      # the handshake succeeded
