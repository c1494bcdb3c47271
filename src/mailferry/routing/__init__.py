"""routing: turn a recipient into (transport, nexthop)."""
