"""smtp_generic_maps (lmtp_generic_maps): addresses rewritten as mail leaves.

generic(5): the SMTP client replaces, at delivery time, the envelope sender,
each envelope recipient, and the addresses in the message's sender and
recipient headers (From:, To:, Cc:..., protocol/header_addresses.py) by what
the table says, in the address lookup order of tables/addresses.py. One
lookup per address, no recursion; a value with several addresses gives its
first. The null sender stays null. The queue keeps the addresses as they
were: the log's `to=<...>` is the address before this mapping, as Postfix's.

A table that fails for now defers the delivery (Postfix's smtp(8) gives up
on the whole delivery with a fatal error, which qmgr turns into a deferral):
the mail is never sent unmapped.
"""

from __future__ import annotations

import dataclasses

from mailferry.message import Recipient
from mailferry.protocol.header_addresses import rewrite_address_headers
from mailferry.tables.addresses import AddressMaps, MapDeferred

__all__ = ["GenericMaps", "MapDeferred"]


class GenericMaps:
    def __init__(self, maps: AddressMaps):
        self.maps = maps
        self.warnings: list[str] = []

    async def address(self, address: str) -> str:
        """Raises MapDeferred."""
        try:
            results = await self.maps.map(address)
        except MapDeferred as problem:
            raise MapDeferred(f"{self.maps.title} map lookup problem for {address}: {problem}") from None
        if results is None:
            return address
        if len(results) > 1:
            self.warnings.append(f"multi-valued {self.maps.title} result for {address}")
        return results[0]

    async def sender(self, sender: str) -> str:
        return await self.address(sender) if sender else sender

    async def recipients(self, recipients: list[Recipient]) -> list[Recipient]:
        """Copies with the mapped addresses: the queue's records stay as they are."""
        return [dataclasses.replace(recipient, address=await self.address(recipient.address))
                for recipient in recipients]

    async def content(self, content: bytes) -> bytes:
        async def rewrite(address: str, kind: str) -> str:
            return await self.address(address)
        return await rewrite_address_headers(content, rewrite)
