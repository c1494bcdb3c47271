"""master: the daemon's life: start, listeners, reload, stop."""
