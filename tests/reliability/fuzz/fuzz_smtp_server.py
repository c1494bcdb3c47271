"""atheris (libFuzzer) target: the sans-IO SMTP server state machine.

The input is split by its first bytes into settings, decisions and a byte
stream cut into chunks; the session is run as smtpd runs it. A crash is an
exception escaping the core, a reply our own ReplyReader cannot parse, or a
receive buffer over its bound after a read.

    .venv/bin/python tests/reliability/fuzz/fuzz_smtp_server.py -dict=tests/reliability/fuzz/smtp.dict \
        -max_len=4096 -max_total_time=600 CORPUS_DIR

See tests/reliability/fuzz/README.md.
"""

import sys

import atheris

with atheris.instrument_imports(include=["mailferry"]):
    # beside this file (a script's directory is on sys.path); imported here so that the mailferry
    # modules it imports are instrumented too
    from decisions import decide
    from mailferry.protocol.server_events import CLOSED, DECISIONS, NEED_DATA, PAUSED
    from mailferry.protocol.smtp_client import ReplyReader
    from mailferry.protocol.smtp_server import ServerConnection, ServerSettings

LINE_LIMIT = 100
SIZE_LIMIT = 2000
AUTH_LINE_LIMIT = 12288
BOUND = AUTH_LINE_LIMIT + 1 + 2 * SIZE_LIMIT + 8


def settings_from(flags: int, limits: int) -> ServerSettings:
    return ServerSettings(
        hostname="mx.example", line_length_limit=LINE_LIMIT, message_size_limit=SIZE_LIMIT,
        recipient_limit=limits % 4, recipient_overshoot_limit=(limits >> 2) % 3,
        hopcount_limit=(limits >> 4) % 4, soft_error_limit=3, hard_error_limit=(0, 5, 20)[(limits >> 6) % 3],
        bare_newline="reject" if flags & 1 else "normalize", forbid_unauth_pipelining=bool(flags & 2),
        helo_required=bool(flags & 4), strict_envelopes=bool(flags & 8), starttls=bool(flags & 16),
        auth_mechanisms=("PLAIN", "LOGIN") if flags & 32 else (), data_decision=bool(flags & 64),
        chunking=bool(flags & 128), smtputf8=bool(flags & 256), vrfy_enabled=bool(flags & 512),
    )


def run_session(data: bytes) -> None:
    provider = atheris.FuzzedDataProvider(data)
    conn = ServerConnection(settings_from(provider.ConsumeIntInRange(0, 1023),
                                          provider.ConsumeIntInRange(0, 255)))
    choices = provider.ConsumeBytes(4) or b"\x02"
    output = bytearray(conn.greeting())
    turn = 0
    closed = False
    while provider.remaining_bytes() and not closed:
        chunk = provider.ConsumeBytes(provider.ConsumeIntInRange(1, 512))
        conn.receive(chunk)
        for _ in range(100_000):
            event = conn.next_event()
            output += conn.data_to_send()
            if event is CLOSED:
                closed = True
                break
            if event is NEED_DATA:
                if conn.buffered_bytes > BOUND:
                    raise AssertionError(f"{conn.buffered_bytes} bytes held after a read")
                break
            if event is PAUSED:
                raise AssertionError("a decision was left pending")
            if isinstance(event, DECISIONS):
                decide(conn, event, choices[turn % len(choices)] % 4)
                turn += 1
            output += conn.data_to_send()
        else:
            raise AssertionError("the server never asked for more input")
    if not closed:
        conn.receive(b"")
        conn.next_event()
        output += conn.data_to_send()
    reader = ReplyReader(max_line_length=100_000, max_lines=100_000)
    reader.feed(bytes(output))      # raises ClientProtocolError on a malformed reply
    if reader.in_reply:
        raise AssertionError("a reply was left unfinished")


def main() -> None:
    atheris.Setup(sys.argv, run_session)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
