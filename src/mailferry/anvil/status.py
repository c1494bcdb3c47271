"""anvil's statistics lines (anvil_status_update_time), in anvil.c's words and order:

    statistics: max connection rate 3/60s for (smtp:192.0.2.1) at Dec  6 04:50:00
    statistics: max connection count 2 for (smtp:192.0.2.1) at Dec  6 04:50:00
    statistics: max cache size 4 at Dec  6 04:50:00

Each peak is the highest since the last report; a kind with no event is left out. Postfix's
"max cache size" is the peak number of clients anvil remembered; here it is the number of live
entries of the shared table at the moment of the report (a scan, not a running peak).
"""

from __future__ import annotations

import time

from mailferry.anvil.clients import ClientTable

_RATES = ("connection", "count", "message", "recipient", "newtls", "auth")


def statistics_lines(table: ClientTable, unit: float) -> list[str]:
    peaks, in_use = table.take_peaks(unit)
    lines = []
    for name in _RATES:
        peak = peaks.get(name)
        if peak is None:
            continue
        if name == "count":
            lines.append(f"statistics: max connection count {peak.value} for ({peak.ident}) at {_when(peak.when)}")
        else:
            lines.append(f"statistics: max {name} rate {peak.value}/{unit:.0f}s for ({peak.ident}) "
                         f"at {_when(peak.when)}")
    if in_use:
        lines.append(f"statistics: max cache size {in_use} at {_when(time.time())}")
    return lines


def _when(when: float) -> str:
    """ctime() without the weekday, as anvil prints it: `Dec  6 04:50:00`."""
    return time.ctime(when)[4:19]
