"""Virtual alias expansion (virtual_alias_maps), as Postfix's cleanup_map1n.

Each address is looked up again and again until no table knows it:

- a value with several addresses fans out, and each of them is expanded
  in its turn (they are appended to the list and visited later);
- an address whose value includes itself (`a@x  a@x, b@y`) is expanded
  once only: the self-copy is delivered as is, so a mailbox can keep a copy;
- more than virtual_alias_recursion_limit lookups down one chain (which
  is what a loop such as `a → b → a` turns into) or more than
  virtual_alias_expansion_limit addresses in all, or a result longer than
  virtual_alias_address_length_limit, and the message is not accepted:
  "451 4.6.0 Alias expansion error", try again later;
- a table that fails for now: the message is not accepted either
  ("451 4.3.0 Error: queue file write error"), never delivered unrewritten.

The caller (cleanup/rewrite.py) removes duplicates among the results.
"""

from __future__ import annotations

from mailferry.tables.addresses import AddressMaps, MapDeferred


class ExpansionError(Exception):
    """The expansion is unreasonable (limits): not accepted, try again later.
    `reply_status` and `reply_text` are Postfix's."""

    reply_status = "4.6.0"
    reply_text = "Alias expansion error"


async def expand(maps: AddressMaps, address: str, recursion_limit: int, expansion_limit: int,
                 length_limit: int, observer=None) -> list[str]:
    """The final addresses for `address`. Raises MapDeferred (a table failed
    for now) or ExpansionError (limits), with a message for the log.
    `observer` (tables/trace.py) is told each step, as it happens."""
    addresses = [address]
    expanded_to_self: set[str] = set()
    index = 0
    while index < len(addresses):
        if len(addresses) > expansion_limit:
            raise ExpansionError(f"unreasonable {maps.title} map expansion size for {address}")
        for depth in range(recursion_limit + 1):
            current = addresses[index]
            if current.lower() in expanded_to_self:
                break
            if depth >= recursion_limit:
                raise ExpansionError(f"unreasonable {maps.title} map nesting for {address}")
            try:
                results = await maps.map(current)
            except MapDeferred as problem:
                raise MapDeferred(f"{maps.title} map lookup problem for {address}: {problem}") from None
            if results is None:
                break
            if observer is not None:
                observer.step("virtual_alias", f"{maps.title}: {current} -> {', '.join(results)}"
                              + (" (maps to itself: not expanded further)"
                                 if current.lower() in (result.lower() for result in results) else ""),
                              map=maps.title, before=current, after=list(results), depth=depth + 1)
            for position, result in enumerate(results):
                if len(result) > length_limit:
                    raise ExpansionError(f"unreasonable {maps.title} result {result[:300]}...")
                if position == 0:
                    addresses[index] = result
                else:
                    addresses.append(result)
                if result.lower() == current.lower():
                    expanded_to_self.add(current.lower())
        index += 1
    return addresses
