#!/usr/bin/env python3
"""The load generator of bench/connections: idle SMTP sessions held open, and active sessions doing
full transactions, each timed.

    _conn_load.py idle   --port P --sessions 5000 [--sources 8] [--opening 200]
    _conn_load.py active --port P --sessions 1000 --seconds 30 [--warmup 5] [--processes 2]
                         [--size 1024] [--sources 8]

`idle`: opens --sessions sessions (connect, 220, EHLO, 250), --opening at a time, then prints one
JSON line (opened, failed, seconds, first_error) and holds them. When a line arrives on stdin (or
stdin closes) it sends QUIT on every session it holds and expects 221: a session the server
dropped, or stopped answering, in the meantime counts as lost. It prints a second JSON line
(quit_ok, lost, first_error, cpu_seconds) and exits.

`active`: --sessions loops in all, spread over --processes processes (asyncio on uvloop, one
loop a process, no thread), each repeating a full transaction for --seconds: connect, 220, EHLO,
MAIL FROM, RCPT TO, DATA, 354, a --size message, 250, QUIT, 221, one command at a time (no
pipelining, as smtp-source does without -P). Each transaction is timed from before connect() to
the 221 (full) and from the end of the message written to its 250 (end of data). Only
transactions that start after --warmup seconds count in the latencies and the rate (the MTA
forks its processes, the loops start together); every accepted message counts in `accepted`,
which the bench compares with what the sink received. Prints one JSON object: accepted, failed,
errors by kind, measured (transactions in the window), window_seconds, latencies in
milliseconds (full and end of data, p50/p90/p99/max), cpu_seconds of the generator processes.

Clients are spread over the source addresses 127.0.0.2 .. 127.0.0.(1+--sources), bound with
IP_BIND_ADDRESS_NO_PORT, so the kernel picks each local port at connect() for the 4-tuple and
thousands of sessions a second neither exhaust one address's ephemeral ports nor trip over
TIME_WAIT. RLIMIT_NOFILE is raised to its hard limit (the bench raises the hard one).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import socket
import sys
import time

IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)
TRANSACTION_TIMEOUT = 60.0   # a transaction or an idle session open longer than this is an error


class Failed(Exception):
    def __init__(self, kind: str, detail: str):
        super().__init__(f"{kind}: {detail}")
        self.kind = kind


def raise_file_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def use_uvloop() -> str:
    try:
        import uvloop
    except ImportError:
        return "asyncio"
    uvloop.install()
    return "uvloop"


async def connect(host: str, port: int, source: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
        sock.bind((source, 0))
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (host, port))
    except BaseException:
        sock.close()
        raise
    return await asyncio.open_connection(sock=sock, limit=65536)


async def expect(reader: asyncio.StreamReader, code: bytes, stage: str) -> None:
    """One reply, multi-line or not; it must start with `code`."""
    while True:
        line = await reader.readline()
        if not line:
            raise Failed(f"closed at {stage}", "the server closed the connection")
        if not line.startswith(code):
            raise Failed(f"{line[:3].decode(errors='replace')} at {stage}",
                         line[:160].decode(errors="replace").strip())
        if line[3:4] != b"-":
            return


async def envelope(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, helo: str, sender: str,
                   recipient: str, stage: list[str]) -> None:
    """From the greeting to DATA's 354, one command at a time (no pipelining, as smtp-source sends
    without -P); `stage` says where it is, for the report of one that fails or times out."""
    for name, command, code in (("greeting", "", b"220"), ("EHLO", f"EHLO {helo}", b"250"),
                                ("MAIL", f"MAIL FROM:<{sender}>", b"250"),
                                ("RCPT", f"RCPT TO:<{recipient}>", b"250"), ("DATA", "DATA", b"354")):
        stage[0] = name
        if command:
            writer.write(command.encode() + b"\r\n")
        await expect(reader, code, name)


def sources(count: int) -> list[str]:
    return [f"127.0.0.{2 + i}" for i in range(max(1, min(count, 250)))]


# --------------------------------------------------------------------------
# idle sessions

async def open_idle(args, source: str, held: list) -> None:
    reader, writer = await connect(args.host, args.port, source)
    try:
        await expect(reader, b"220", "greeting")
        writer.write(b"EHLO idle.example\r\n")
        await expect(reader, b"250", "EHLO")
    except BaseException:
        writer.close()
        raise
    held.append((reader, writer))


async def quit_idle(reader, writer) -> None:
    try:
        writer.write(b"QUIT\r\n")
        await expect(reader, b"221", "QUIT")
    finally:
        writer.close()


async def idle(args) -> None:
    held: list = []
    addresses = sources(args.sources)
    errors: dict[str, int] = {}
    first_error = ""
    started = time.monotonic()
    next_index = 0

    async def opener() -> None:
        nonlocal next_index, first_error
        while next_index < args.sessions:
            index = next_index
            next_index += 1
            try:
                await asyncio.wait_for(open_idle(args, addresses[index % len(addresses)], held), TRANSACTION_TIMEOUT)
            except (Failed, OSError, asyncio.TimeoutError) as exc:
                kind = exc.kind if isinstance(exc, Failed) else type(exc).__name__
                errors[kind] = errors.get(kind, 0) + 1
                first_error = first_error or str(exc) or kind

    await asyncio.gather(*(opener() for _ in range(min(args.opening, args.sessions))))
    print(json.dumps({"opened": len(held), "failed": sum(errors.values()), "errors": errors,
                      "seconds": time.monotonic() - started, "first_error": first_error}), flush=True)

    # hold them until the bench says so (a line, or stdin closed)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    results = await asyncio.gather(*(asyncio.wait_for(quit_idle(r, w), TRANSACTION_TIMEOUT) for r, w in held),
                                   return_exceptions=True)
    lost = [r for r in results if isinstance(r, BaseException)]
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"quit_ok": len(results) - len(lost), "lost": len(lost),
                      "first_error": f"{type(lost[0]).__name__}: {lost[0]}" if lost else "",
                      "cpu_seconds": usage.ru_utime + usage.ru_stime}), flush=True)


# --------------------------------------------------------------------------
# active sessions

async def transaction(args, source: str, message: bytes, stage: list[str]) -> tuple[float, float]:
    """One full transaction; (connect-to-221, end-of-data-to-250) in seconds. `stage` says
    where it is, for the report of one that times out."""
    started = time.perf_counter()
    stage[0] = "connect"
    reader, writer = await connect(args.host, args.port, source)
    try:
        await envelope(reader, writer, "active.example", args.sender, args.recipient, stage)
        writer.write(message)
        end_of_data = time.perf_counter()
        stage[0] = "end of data"
        await expect(reader, b"250", "end of data")
        accepted = time.perf_counter()
        stage[0] = "QUIT"
        writer.write(b"QUIT\r\n")
        try:
            await expect(reader, b"221", "QUIT")
        except Failed as exc:
            raise Failed(exc.kind + " (message accepted)", str(exc)) from None
        return time.perf_counter() - started, accepted - end_of_data
    finally:
        writer.close()


async def active(args, share: int, index: int) -> dict:
    body = (b"x" * 76 + b"\r\n") * max(1, (args.size - 140) // 78)
    addresses = sources(args.sources)
    begin = time.perf_counter()
    window_start, stop_at = begin + args.warmup, begin + args.seconds
    full: list[float] = []
    eod: list[float] = []
    errors: dict[str, int] = {}
    state = {"accepted": 0, "failed": 0, "first_error": "", "serial": 0}

    async def loop(n: int) -> None:
        source = addresses[(index * share + n) % len(addresses)]
        while time.perf_counter() < stop_at:
            state["serial"] += 1
            message = (b"From: <" + args.sender.encode() + b">\r\nTo: <" + args.recipient.encode()
                       + b">\r\nSubject: bench " + f"{index}.{state['serial']}".encode() + b"\r\n\r\n"
                       + body + b".\r\n")
            began = time.perf_counter()
            stage = [""]
            try:
                whole, data = await asyncio.wait_for(transaction(args, source, message, stage), TRANSACTION_TIMEOUT)
            except (Failed, OSError, asyncio.TimeoutError) as exc:
                kind = exc.kind if isinstance(exc, Failed) else f"{type(exc).__name__} at {stage[0]}"
                errors[kind] = errors.get(kind, 0) + 1
                state["failed"] += 1
                if "message accepted" in kind or stage[0] == "QUIT":
                    state["accepted"] += 1
                state["first_error"] = state["first_error"] or str(exc) or kind
                await asyncio.sleep(0.1)   # a refused connect must not spin
                continue
            state["accepted"] += 1
            if began >= window_start and time.perf_counter() <= stop_at:
                full.append(whole)
                eod.append(data)

    await asyncio.gather(*(loop(n) for n in range(share)))
    return {"accepted": state["accepted"], "failed": state["failed"], "errors": errors,
            "first_error": state["first_error"], "full": full, "eod": eod,
            "window_seconds": args.seconds - args.warmup}


def percentiles(values: list[float]) -> dict:
    if not values:
        return {}
    ordered = sorted(values)

    def at(fraction: float) -> float:
        return 1000 * ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]
    return {"p50": at(0.50), "p90": at(0.90), "p99": at(0.99), "max": 1000 * ordered[-1]}


def run_active(args) -> None:
    shares = [args.sessions // args.processes + (1 if i < args.sessions % args.processes else 0)
              for i in range(args.processes)]
    children = []   # (pid, read end): a pipe each, as a result is larger than an atomic write
    for index, share in enumerate(shares):
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(read_fd)
            code = 1
            try:
                use_uvloop()
                result = asyncio.run(active(args, share, index))
                with os.fdopen(write_fd, "w") as out:
                    out.write(json.dumps(result) + "\n")
                code = 0
            finally:
                os._exit(code)
        os.close(write_fd)
        children.append((pid, read_fd))
    parts = []
    for pid, read_fd in children:
        with os.fdopen(read_fd) as result:
            text = result.read()
        if text.strip():
            parts.append(json.loads(text))
        os.waitpid(pid, 0)
    full = [v for part in parts for v in part["full"]]
    eod = [v for part in parts for v in part["eod"]]
    errors: dict[str, int] = {}
    for part in parts:
        for kind, n in part["errors"].items():
            errors[kind] = errors.get(kind, 0) + n
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    window = args.seconds - args.warmup
    print(json.dumps({
        "accepted": sum(part["accepted"] for part in parts),
        "failed": sum(part["failed"] for part in parts) + (args.processes - len(parts)) * 10**6,
        "errors": errors,
        "first_error": next((part["first_error"] for part in parts if part["first_error"]), ""),
        "measured": len(full),
        "window_seconds": window,
        "transactions_per_second": len(full) / window,
        "full_ms": percentiles(full),
        "end_of_data_ms": percentiles(eod),
        "cpu_seconds": usage.ru_utime + usage.ru_stime,
        "processes": args.processes,
    }), flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=("idle", "active"))
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--sessions", type=int, required=True)
    parser.add_argument("--sources", type=int, default=8, help="source addresses 127.0.0.2 .. (default 8)")
    parser.add_argument("--opening", type=int, default=200, help="idle: sessions opened at a time")
    parser.add_argument("--seconds", type=float, default=30.0, help="active: how long")
    parser.add_argument("--warmup", type=float, default=5.0, help="active: not measured at first")
    parser.add_argument("--processes", type=int, default=2, help="active: generator processes")
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--sender", default="sender@example.com")
    parser.add_argument("--recipient", default="rcpt@example.net")
    args = parser.parse_args()
    raise_file_limit()
    if args.mode == "idle":
        use_uvloop()
        asyncio.run(idle(args))
    else:
        run_active(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
