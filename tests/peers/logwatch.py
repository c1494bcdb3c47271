"""Counting delivery records in a growing maillog file (Postfix's and mailferry's alike)."""

from __future__ import annotations

from pathlib import Path


class LogWatcher:
    """Counts Postfix-style delivery records in a maillog file as it grows,
    reading only what was appended since the last `poll()` (complete lines
    only). Works for Postfix's and mailferry's logs alike:

        sent      "status=sent ("      (smtp/lmtp/local delivered it)
        deferred  "status=deferred ("
        bounced   "status=bounced ("
        expired   "status=expired,"
        removed   "QUEUEID: removed"   (qmgr: the message left the queue)

    and keeps the first `keep` lines that are not sent/removed records but
    say deferred/bounced or warning:/error:/fatal:/panic:, as evidence."""

    PATTERNS = {
        "sent": b" status=sent (",
        "deferred": b" status=deferred (",
        "bounced": b" status=bounced (",
        "expired": b" status=expired,",
        "removed": b": removed\n",
    }
    PROBLEMS = (b" status=deferred (", b" status=bounced (", b" status=expired,",
                b"warning:", b"error:", b"fatal:", b"panic:")

    def __init__(self, path: Path, keep: int = 20):
        self.path = Path(path)
        self.keep = keep
        self.offset = 0
        self.counts = {name: 0 for name in self.PATTERNS}
        self.problems: list[str] = []
        self.problem_lines = 0

    def poll(self) -> dict[str, int]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                chunk = f.read()
        except OSError:
            return dict(self.counts)
        end = chunk.rfind(b"\n")
        if end < 0:
            return dict(self.counts)
        chunk = chunk[: end + 1]
        self.offset += len(chunk)
        for name, pattern in self.PATTERNS.items():
            self.counts[name] += chunk.count(pattern)
        for token in self.PROBLEMS:
            start = chunk.find(token)
            while start >= 0:
                line_start = chunk.rfind(b"\n", 0, start) + 1
                line_end = chunk.find(b"\n", start)
                self.problem_lines += 1
                if len(self.problems) < self.keep:
                    self.problems.append(chunk[line_start:line_end].decode(errors="replace"))
                start = chunk.find(token, line_end)
        return dict(self.counts)
