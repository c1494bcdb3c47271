#!/usr/bin/env python3
"""The latency probe of bench/relay: timed probe messages sent alongside the smtp-source load.

    _probe.py --port P --rate 10 --run TAG [--size 1024] [--host 127.0.0.1]

From its start until a line arrives on stdin (or stdin closes), it starts one probe transaction
every 1/--rate seconds on a fixed schedule (open loop: a slow server does not slow the probes
down, so slow replies are not left out of the figures), each on its own connection, as
smtp-source sends each message without -d: connect, 220, EHLO, MAIL FROM, RCPT TO, DATA, 354,
the message, 250, QUIT, one command at a time. Message N goes to its own recipient
`probe-TAG-N@example.net` (the load's domain, so it takes the load's route) with the Message-ID
`<probe-TAG-N@bench.example.test>`, and is --size bytes like the load's.

For each probe it records the time from the end of the message written (the final CRLF.CRLF)
to the 250 read, with time.perf_counter_ns(), and the wall-clock time (time.time_ns(),
CLOCK_REALTIME, comparable with a file's mtime) at which that 250 was read. Then it waits for
the transactions in flight and prints one JSON object: probes (recipient, message_id,
data_to_250_ns, replied_at_ns, reply), failures (recipient, stage, error), cpu_seconds.

It raises its own scheduling priority (nice -10) when it may, so that it reads a reply when the
reply arrives rather than when two saturated cores have time for it; it is one client at a
few messages a second, its CPU time is printed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import sys
import time

from _conn_load import Failed, envelope, expect, use_uvloop

TRANSACTION_TIMEOUT = 60.0
SENDER = "sender@example.com"


def probe_message(recipient: str, message_id: str, size: int) -> bytes:
    header = (f"From: <{SENDER}>\r\nTo: <{recipient}>\r\nMessage-ID: <{message_id}>\r\n"
              f"Subject: latency probe\r\n\r\n").encode()
    line = b"x" * 76 + b"\r\n"
    body = line * max(1, (size - len(header)) // len(line))
    return header + body + b".\r\n"


async def transaction(host: str, port: int, recipient: str, message: bytes, stage: list[str]) -> dict:
    stage[0] = "connect"
    reader, writer = await asyncio.open_connection(host, port)
    try:
        await envelope(reader, writer, "probe.example", SENDER, recipient, stage)
        stage[0] = "end of data"
        writer.write(message)
        end_of_data = time.perf_counter_ns()
        line = await reader.readline()
        replied = time.perf_counter_ns()
        replied_at = time.time_ns()
        if not line.startswith(b"250 "):
            raise Failed(f"{line[:3].decode(errors='replace')} at end of data",
                         line[:160].decode(errors="replace").strip() or "connection closed")
        stage[0] = "QUIT"
        writer.write(b"QUIT\r\n")
        await expect(reader, b"221", "QUIT")
        return {"data_to_250_ns": replied - end_of_data, "replied_at_ns": replied_at,
                "reply": line.decode(errors="replace").strip()}
    finally:
        writer.close()


async def run(args: argparse.Namespace) -> dict:
    probes: list[dict] = []
    failures: list[dict] = []
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.run_in_executor(None, sys.stdin.readline).add_done_callback(lambda _: stop.set())

    async def one(n: int) -> None:
        recipient = f"probe-{args.run}-{n}@example.net"
        message_id = f"probe-{args.run}-{n}@bench.example.test"
        stage = [""]
        try:
            timing = await asyncio.wait_for(
                transaction(args.host, args.port, recipient,
                            probe_message(recipient, message_id, args.size), stage), TRANSACTION_TIMEOUT)
        except (Failed, OSError, asyncio.TimeoutError) as exc:
            failures.append({"recipient": recipient, "stage": stage[0],
                             "error": f"{type(exc).__name__}: {exc}"})
            return
        probes.append({"recipient": recipient, "message_id": message_id, **timing})

    tasks = []
    interval = 1.0 / args.rate
    start = loop.time()
    n = 0
    while not stop.is_set():
        tasks.append(asyncio.ensure_future(one(n)))
        n += 1
        try:
            await asyncio.wait_for(stop.wait(), max(0.0, start + n * interval - loop.time()))
        except asyncio.TimeoutError:
            pass
    await asyncio.gather(*tasks)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {"started": n, "probes": probes, "failures": failures,
            "seconds": loop.time() - start, "cpu_seconds": usage.ru_utime + usage.ru_stime}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--rate", type=float, default=10.0, help="probes a second (default 10)")
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--run", required=True, help="a tag that makes the recipients unique to the run")
    args = parser.parse_args()
    try:
        os.setpriority(os.PRIO_PROCESS, 0, -10)
    except OSError:
        pass
    use_uvloop()
    print(json.dumps(asyncio.run(run(args))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
