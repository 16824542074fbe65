"""A background task that calls `poll_once()` every `interval` seconds until stopped, and
`stop_task`, the one way this service stops a background task."""

from __future__ import annotations

import asyncio
import logging

log = logging.getLogger(__name__)

# How long stop_task waits for a task to end after each cancel before cancelling again.
RECANCEL_AFTER = 0.2


async def stop_task(task: asyncio.Task[None], attempts: int = 50) -> None:
    """Cancel `task` and wait until it has ended.

    One `cancel()` is not always enough: redis-py's asyncio client can swallow a cancellation
    that lands while a command is completing (redis/redis-py#2028, #2551; seen here with
    redis 8.1.0 on Python 3.11: `hgetall` returned normally with the task still marked
    cancelling). The task then runs on, and `await task` would wait forever — a service that
    never finishes closing, so its SIGTERM drain (decision log, audit trail) never ends. So the
    task is cancelled again until it ends; the loops below also check a stop flag.
    """
    for _ in range(attempts):
        if task.done():
            break
        task.cancel()
        await asyncio.wait({task}, timeout=RECANCEL_AFTER)
    else:
        log.error("background task %s did not end after %d cancellations", task, attempts)
        return
    if not task.cancelled() and task.exception() is not None:
        log.error("background task %s failed", task, exc_info=task.exception())


class Periodic:
    """Base for watchers that refresh in-process state off the request path."""

    _interval: float
    _task_name = "periodic"
    _stopping = False

    async def poll_once(self) -> object:
        raise NotImplementedError

    async def _run(self) -> None:
        while not self._stopping:
            await self.poll_once()
            if self._stopping:  # a poll that swallowed the cancellation ends the loop here
                break
            await asyncio.sleep(self._interval)

    def start(self) -> None:
        self._stopping = False
        self._task: asyncio.Task[None] | None = asyncio.create_task(
            self._run(), name=self._task_name
        )

    async def stop(self) -> None:
        task = getattr(self, "_task", None)
        if task is not None:
            self._stopping = True
            await stop_task(task)
            self._task = None
