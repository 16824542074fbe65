"""Stopping background tasks when a library swallows the cancellation (redis-py #2028/#2551):
before `stop_task`, the service's close() waited forever on such a task (issue 14's hang)."""

from __future__ import annotations

import asyncio

import pytest

from extauthz.periodic import Periodic, stop_task


class Swallowing(Periodic):
    """A poll that, like redis-py's client at the wrong moment, returns normally when the
    cancellation lands inside it (the task stays marked cancelling, as in the hang's dump)."""

    _interval = 0.01
    _task_name = "swallowing"

    def __init__(self) -> None:
        self.polls = 0
        self.swallowed = 0
        self.in_poll = asyncio.Event()

    async def poll_once(self) -> None:
        self.polls += 1
        self.in_poll.set()
        try:
            await asyncio.sleep(0.05)
        except asyncio.CancelledError:
            self.swallowed += 1


async def test_a_periodic_whose_poll_swallows_the_cancel_still_stops() -> None:
    watcher = Swallowing()
    watcher.start()
    await watcher.in_poll.wait()  # the cancel lands inside the poll, as it did in the hang
    await asyncio.wait_for(watcher.stop(), 5)
    assert watcher.swallowed >= 1  # the scenario really happened
    polls = watcher.polls
    await asyncio.sleep(0.1)
    assert watcher.polls == polls  # and nothing runs on after stop()


async def test_stop_task_cancels_again_a_task_that_ignored_the_first_cancel() -> None:
    ignored = 0

    async def stubborn() -> None:
        nonlocal ignored
        while True:
            try:
                await asyncio.sleep(1)
            except asyncio.CancelledError:
                ignored += 1
                if ignored == 3:
                    raise

    task = asyncio.create_task(stubborn())
    await asyncio.sleep(0)
    await asyncio.wait_for(stop_task(task), 5)
    assert task.cancelled()
    assert ignored == 3


async def test_stop_task_gives_up_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    async def immortal() -> None:
        while True:
            try:
                await asyncio.sleep(1)
            except asyncio.CancelledError:
                pass

    task = asyncio.create_task(immortal())
    await asyncio.sleep(0)
    await asyncio.wait_for(stop_task(task, attempts=3), 5)
    assert not task.done()
    assert "did not end after 3 cancellations" in caplog.text
    task.cancel()
    # let it die for the event loop's sake: it swallows, so close the coroutine by hand
    task.get_coro().close()
