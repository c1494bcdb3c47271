"""smtpd runs a restriction check up to its first wait at once, and only a check that waits gets
a Task, which must then see the rest of it exactly as if it had run the whole (service._Resumed)."""

import asyncio

import pytest

from mailferry.smtpd.service import _Resumed


def test_the_rest_of_a_check_that_waits_runs_in_a_task_and_returns_its_value():
    async def main():
        gate = asyncio.get_running_loop().create_future()
        steps = []

        async def check():
            steps.append("before")
            value = await gate
            steps.append("after")
            await asyncio.sleep(0)       # a bare yield on the way, too
            return value * 2

        coroutine = check()
        first = coroutine.send(None)     # what smtpd does: the first step, outside any Task
        assert first is gate and steps == ["before"]
        task = asyncio.ensure_future(_wrap(_Resumed(coroutine, first)))
        await asyncio.sleep(0)
        assert not task.done()
        gate.set_result(21)
        assert await task == 42
        assert steps == ["before", "after"]

    asyncio.run(main())


def test_cancelling_the_task_reaches_the_check():
    async def main():
        gate = asyncio.get_running_loop().create_future()
        cleaned = []

        async def check():
            try:
                await gate
            finally:
                cleaned.append("finally ran")

        coroutine = check()
        task = asyncio.ensure_future(_wrap(_Resumed(coroutine, coroutine.send(None))))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert cleaned == ["finally ran"]

    asyncio.run(main())


def test_an_error_after_the_wait_is_the_tasks():
    async def main():
        gate = asyncio.get_running_loop().create_future()

        async def check():
            await gate
            raise LookupError("the table said no")

        coroutine = check()
        task = asyncio.ensure_future(_wrap(_Resumed(coroutine, coroutine.send(None))))
        gate.set_result(None)
        with pytest.raises(LookupError, match="the table said no"):
            await task

    asyncio.run(main())


async def _wrap(resumed):
    return await resumed
