"""A background task that calls `poll_once()` every `interval` seconds until stopped."""

from __future__ import annotations

import asyncio


class Periodic:
    """Base for watchers that refresh in-process state off the request path."""

    _interval: float
    _task_name = "periodic"

    async def poll_once(self) -> object:
        raise NotImplementedError

    async def _run(self) -> None:
        while True:
            await self.poll_once()
            await asyncio.sleep(self._interval)

    def start(self) -> None:
        self._task: asyncio.Task[None] | None = asyncio.create_task(
            self._run(), name=self._task_name
        )

    async def stop(self) -> None:
        task = getattr(self, "_task", None)
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
