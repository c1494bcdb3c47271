"""delivery/destinations.py: per-next-hop session slots and dead-site memory, on a clock the test turns."""

from __future__ import annotations

import asyncio

from mailferry.delivery.destinations import SUSPEND_SECONDS, Destinations
from tests.unit.delivery.scripted_peer import FakeClock


def test_a_dead_destination_is_remembered_until_the_suspension_ends():
    clock = FakeClock()
    destinations = Destinations(10, clock=clock)
    destinations.mark_dead("[mx.example]:25", "connect to mx.example[192.0.2.1]:25: Connection refused")
    assert destinations.dead_reason("[mx.example]:25") == "connect to mx.example[192.0.2.1]:25: Connection refused"
    assert destinations.dead_reason("other.example") is None
    clock.now += SUSPEND_SECONDS - 0.001
    assert destinations.dead_reason("[mx.example]:25") is not None
    clock.now += 0.001
    assert destinations.dead_reason("[mx.example]:25") is None


def test_forget_dead_clears_every_destination():
    destinations = Destinations(10, clock=FakeClock())
    destinations.mark_dead("a.example", "refused")
    destinations.mark_dead("b.example", "refused")
    destinations.forget_dead()
    assert (destinations.dead_reason("a.example"), destinations.dead_reason("b.example")) == (None, None)


def test_slots_are_taken_in_turn_and_forgotten_when_no_job_is_left():
    async def scenario():
        destinations = Destinations(1)
        order: list[str] = []
        first_in = asyncio.Event()
        release = asyncio.Event()

        async def job(name: str, hold: bool):
            async with destinations.slot("mx.example"):
                order.append(f"{name} in")
                if hold:
                    first_in.set()
                    await release.wait()
                order.append(f"{name} out")

        first = asyncio.ensure_future(job("first", True))
        await first_in.wait()
        second = asyncio.ensure_future(job("second", False))
        while destinations.waiting("mx.example") != 1:
            await asyncio.sleep(0)
        waiting_while_held = order.copy()
        release.set()
        await asyncio.gather(first, second)
        return order, waiting_while_held, destinations.tracked(), destinations.waiting("mx.example")

    order, waiting_while_held, tracked, waiting = asyncio.run(asyncio.wait_for(scenario(), 10))
    assert waiting_while_held == ["first in"]
    assert order == ["first in", "first out", "second in", "second out"]
    assert (tracked, waiting) == (0, 0)


def test_a_cancelled_waiter_gives_its_place_back():
    async def scenario():
        destinations = Destinations(1)
        held = asyncio.Event()
        release = asyncio.Event()

        async def holder():
            async with destinations.slot("mx.example"):
                held.set()
                await release.wait()

        async def waiter():
            async with destinations.slot("mx.example"):
                pass

        holding = asyncio.ensure_future(holder())
        await held.wait()
        waiting = asyncio.ensure_future(waiter())
        while destinations.waiting("mx.example") != 1:
            await asyncio.sleep(0)
        waiting.cancel()
        await asyncio.gather(waiting, return_exceptions=True)
        after_cancel = destinations.waiting("mx.example")
        release.set()
        await holding
        return after_cancel, destinations.tracked()

    assert asyncio.run(asyncio.wait_for(scenario(), 10)) == (0, 0)
