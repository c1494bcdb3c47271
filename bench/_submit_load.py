#!/usr/bin/env python3
"""The load generator of bench/submission: SMTP submission sessions, as fast as it can.

    _submit_load.py --port P --sessions 2000 --concurrency 20 --size 1024 --user U --password W
                    [--tls-only] [--processes 1]

Each session: connect, 220, EHLO, STARTTLS, TLS handshake (no certificate check: the client's
cost is the same against both servers), EHLO, AUTH PLAIN (initial response, one round trip),
MAIL/RCPT/DATA pipelined, the message, QUIT. One asyncio loop (uvloop when installed) per
process, `--concurrency` sessions in flight in each, no thread. swaks and smtplib spend far
more CPU per session than this; the bench reports this generator's own CPU time per session,
so its ceiling (sessions per CPU second) is known next to every figure.

`--tls-only` stops after the handshake and EHLO (QUIT): the generator's and the server's TLS
cost alone. Prints one JSON object: sessions, failed, seconds (wall), cpu_seconds (this
process tree's user+sys), first_error.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import ssl
import sys
import time


def client_context() -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


class Failed(Exception):
    pass


async def expect(reader: asyncio.StreamReader, code: bytes) -> None:
    """Read one (possibly multi-line) reply; it must start with `code`."""
    while True:
        line = await reader.readline()
        if not line.startswith(code):
            raise Failed(f"expected {code.decode()}, got {line[:120]!r}")
        if line[3:4] != b"-":
            return


async def one_session(args, context: ssl.SSLContext, message: bytes, auth: bytes) -> None:
    reader, writer = await asyncio.open_connection(args.host, args.port)
    try:
        await expect(reader, b"220")
        writer.write(b"EHLO load.example\r\n")   # EHLO ends a pipelined group (RFC 2920)
        await expect(reader, b"250")
        writer.write(b"STARTTLS\r\n")
        await expect(reader, b"220")
        await writer.start_tls(context, server_hostname="bench.example.test")
        writer.write(b"EHLO load.example\r\n")
        await expect(reader, b"250")
        if args.tls_only:
            writer.write(b"QUIT\r\n")
            await expect(reader, b"221")
            return
        writer.write(b"AUTH PLAIN " + auth + b"\r\n")
        await expect(reader, b"235")
        writer.write(b"MAIL FROM:<" + args.sender.encode() + b">\r\nRCPT TO:<" + args.recipient.encode()
                     + b">\r\nDATA\r\n")
        await expect(reader, b"250")
        await expect(reader, b"250")
        await expect(reader, b"354")
        writer.write(message)
        await expect(reader, b"250")
        writer.write(b"QUIT\r\n")
        await expect(reader, b"221")
    finally:
        writer.close()


async def run(args, count: int) -> dict:
    context = client_context()
    body = (b"x" * 76 + b"\r\n") * max(1, (args.size - 120) // 78)
    message = (b"From: <" + args.sender.encode() + b">\r\nTo: <" + args.recipient.encode()
               + b">\r\nSubject: bench\r\n\r\n" + body + b".\r\n")
    auth = base64.b64encode(f"\0{args.user}\0{args.password}".encode())
    remaining = count
    failed = 0
    first_error = ""

    async def worker() -> None:
        nonlocal remaining, failed, first_error
        while remaining > 0:
            remaining -= 1
            try:
                await asyncio.wait_for(one_session(args, context, message, auth), 60)
            except (Failed, OSError, asyncio.TimeoutError, ssl.SSLError) as exc:
                failed += 1
                first_error = first_error or f"{type(exc).__name__}: {exc}"

    await asyncio.gather(*(worker() for _ in range(args.concurrency)))
    return {"failed": failed, "first_error": first_error}


def child(args, count: int, write_fd: int) -> None:
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    result = asyncio.run(run(args, count))
    os.write(write_fd, (json.dumps(result) + "\n").encode())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--sessions", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--user", default="bench")
    parser.add_argument("--password", default="bench password")
    parser.add_argument("--sender", default="bench@example.com")
    parser.add_argument("--recipient", default="rcpt@remote.example")
    parser.add_argument("--tls-only", action="store_true")
    args = parser.parse_args()

    read_fd, write_fd = os.pipe()
    shares = [args.sessions // args.processes + (1 if i < args.sessions % args.processes else 0)
              for i in range(args.processes)]
    started = time.monotonic()
    pids = []
    for share in shares:
        pid = os.fork()
        if pid == 0:
            os.close(read_fd)
            try:
                child(args, share, write_fd)
            finally:
                os._exit(0)
        pids.append(pid)
    os.close(write_fd)
    for pid in pids:
        os.waitpid(pid, 0)
    seconds = time.monotonic() - started
    with os.fdopen(read_fd) as results:
        parts = [json.loads(line) for line in results if line.strip()]
    usage = os.times()
    print(json.dumps({
        "sessions": args.sessions,
        "failed": sum(part["failed"] for part in parts) + args.processes - len(parts),
        "seconds": seconds,
        "cpu_seconds": usage.children_user + usage.children_system,
        "first_error": next((part["first_error"] for part in parts if part["first_error"]), ""),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
