"""cleanup: complete a message's envelope and headers before it is queued."""
