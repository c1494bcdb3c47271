"""`mailferry-sendmail`, the /usr/sbin/sendmail interface.

The queue it hands messages to is not built yet. Until then it refuses
loudly with EX_TEMPFAIL (75), which tells a calling program to keep the
message and try again, rather than pretending to accept it.
"""

from __future__ import annotations

import sys

EX_TEMPFAIL = 75


def main(argv: list[str] | None = None) -> int:
    print("mailferry-sendmail: fatal: local submission is not implemented yet in this version "
          "of mailferry; the message was NOT accepted (exit status 75, try again later)",
          file=sys.stderr)
    return EX_TEMPFAIL


if __name__ == "__main__":
    raise SystemExit(main())
