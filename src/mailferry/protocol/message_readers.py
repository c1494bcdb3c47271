"""Reading a message out of the receive buffer: DATA and BDAT.

DATA ends at exactly CR LF "." CR LF. The search for it starts where the last
one stopped (less 4 bytes), so no byte is examined twice. The CR LF of the DATA
command line is kept in front of the content, so a "." on the very first line
needs no special case. Dot-unstuffing is one bytes.replace over the whole
message, and bare-LF handling happens only when the counts of b"\\n" and
b"\\r\\n" differ. A message that grows past message_size_limit is no longer
stored (the last 4 bytes are kept for the terminator search) and is refused
with 552 when it ends.

A bare LF never ends the data, and a bare CR is never a line end: all the
SMTP-smuggling spellings of the terminator (\\n.\\n, \\r.\\r, \\r\\n.\\n ...) stay
inside the one message.

BDAT chunks are counted bytes: a chunk is taken from the buffer as it
arrives, and stored, or dropped when the chunk is refused (the client sends
it anyway, so it must still be read).

The readers work on the connection's receive buffer (a bytearray) and know
nothing of commands, phases or replies; smtp_server.ServerConnection decides
what a finished message or chunk means.
"""

from __future__ import annotations

from mailferry.protocol import replies
from mailferry.protocol.esmtp_parameters import LARGEST_SIZE
from mailferry.protocol.replies import Reply
from mailferry.protocol.server_events import DATA

END_OF_DATA = b"\r\n.\r\n"

# How a BDAT chunk is handled once read.
STORE = "store"
DROP_WITH_ERROR = "drop-with-error"     # answered with the chunk's error
DROP_AS_DISCARDED = "drop-discarded"    # "551 Discarded N bytes after earlier error"


class DataReader:
    """Finds the end of one DATA message after another in a session."""

    def __init__(self, size_limit: int):
        self.size_limit = size_limit            # message_size_limit; 0 = none
        # Bytes examined while looking for END_OF_DATA, over the session:
        # tests use it to show that nothing is searched twice.
        self.bytes_examined = 0
        self._scan_from = 0
        self._over_limit = False
        self._stuffed_dots = 0
        self._dots_counted_to = 0

    def start(self, buffer: bytearray) -> None:
        """DATA was answered 354: the message starts at the front of `buffer`."""
        # Our own CR LF in front: a "." on the first line ends the data like any other.
        buffer[0:0] = b"\r\n"
        self._scan_from = 0
        self._over_limit = False
        self._stuffed_dots = 0
        self._dots_counted_to = 0

    def find_end(self, buffer: bytearray) -> int:
        """Where END_OF_DATA starts in `buffer`; -1 while it has not come
        (and a message over the limit is cut down meanwhile)."""
        end = buffer.find(END_OF_DATA, self._scan_from)
        self.bytes_examined += (len(buffer) if end < 0 else end + len(END_OF_DATA)) - self._scan_from
        if end < 0:
            # The terminator may start in the last 4 bytes: look there again next time.
            self._scan_from = max(len(buffer) - (len(END_OF_DATA) - 1), 0)
            self._watch_size(buffer)
        return end

    def take(self, buffer: bytearray, end: int) -> tuple[bytes | None, bytearray]:
        """The message (None if it went over the limit) and, in a fresh buffer,
        the input that followed it. A fresh buffer lets a large message's memory go at once."""
        content = None
        with memoryview(buffer) as view:
            if not self._over_limit:
                content = bytes(view[2:end + 2])   # after our leading CR LF, with the last line's CR LF
            rest = bytearray(view[end + len(END_OF_DATA):])
        return content, rest

    def _watch_size(self, buffer: bytearray) -> None:
        """Stop storing a message that is certain to be over the limit."""
        limit = self.size_limit
        if not limit:
            return
        if not self._over_limit:
            stored = len(buffer) - 2
            if stored <= limit:
                return
            # Stuffed dots do not count (RFC 1870). Counted incrementally, and
            # only for messages already near the limit.
            self._stuffed_dots += buffer.count(b"\r\n..", self._dots_counted_to)
            self._dots_counted_to = max(self._dots_counted_to, len(buffer) - 3)
            if stored - self._stuffed_dots <= limit:
                return
            self._over_limit = True
        surplus = len(buffer) - (len(END_OF_DATA) - 1)
        if surplus > 0:
            del buffer[:surplus]
            self._scan_from = 0


class ChunkReader:
    """One BDAT chunk at a time; the chunks stored add up to `message`."""

    def __init__(self) -> None:
        self.message = bytearray()
        self.size = 0
        self.last = False
        self.handling = STORE
        self.error: Reply | None = None         # the reply for DROP_WITH_ERROR
        self._remaining = 0

    def start(self, size: int, last: bool, handling: str, error: Reply | None = None) -> None:
        self.size = self._remaining = size
        self.last = last
        self.handling = handling
        self.error = error

    def read(self, buffer: bytearray) -> bool:
        """Take what has come of the chunk out of `buffer`; True once it is all read."""
        if self._remaining:
            if not buffer:
                return False
            take = min(self._remaining, len(buffer))
            if self.handling == STORE:
                with memoryview(buffer) as view:
                    self.message += view[:take]
            del buffer[:take]
            self._remaining -= take
        return not self._remaining

    def forget(self) -> None:
        """Drop the chunks stored so far."""
        self.message = bytearray()


def bdat_arguments(argument: str) -> tuple[int, bool] | None:
    """(size, last) of "BDAT size [LAST]"; None when the chunk cannot be framed."""
    words = argument.split()
    last = len(words) == 2 and words[1].upper() == "LAST"
    if not 1 <= len(words) <= 2 or (len(words) == 2 and not last) \
            or not words[0].isascii() or not words[0].isdigit() \
            or int(words[0]) > LARGEST_SIZE:
        return None
    return int(words[0]), last


def has_bare_newline(content: bytes) -> bool:
    return content.count(b"\n") != content.count(b"\r\n")


def as_received(content: bytes, via: str, bare_newline: bool) -> bytes:
    """The message as the application gets it: CR LF line ends throughout
    (`bare_newline`: some lines end in a bare LF), no dot-stuffing, and a
    final line end."""
    if bare_newline:
        content = content.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    if via == DATA:
        content = content.replace(b"\r\n..", b"\r\n.")
        if content.startswith(b".."):
            content = content[1:]
    elif content and not content.endswith(b"\r\n"):
        content += b"\r\n"      # as Postfix does for a BDAT message without a final line end
    return content


def message_refusal(content: bytes, size_limit: int, hopcount_limit: int) -> Reply | None:
    """The checks that need the whole message: its size and its hop count."""
    if size_limit and len(content) > size_limit:
        return replies.MESSAGE_TOO_BIG
    # Counting the Received: header we are about to add, as Postfix's cleanup does.
    if hopcount_limit and count_received_headers(content) + 1 >= hopcount_limit:
        return replies.TOO_MANY_HOPS
    return None


def count_received_headers(content: bytes) -> int:
    """Received: header fields in the header section of `content`."""
    if content.startswith(b"\r\n"):
        return 0
    end = content.find(b"\r\n\r\n")
    header = content if end < 0 else content[:end + 2]
    return (b"\r\n" + header.lower()).count(b"\r\nreceived:")
