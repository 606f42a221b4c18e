"""Background tasks of the gateway's lifespan (the policy watcher, the stats flusher)."""

from __future__ import annotations

import asyncio

STOP_WAIT_S = 2.0


async def stop_task(task: asyncio.Task[None], stop: asyncio.Event) -> None:
    """Ask `task` to end (`stop`), give it `STOP_WAIT_S` to do so, then cancel it."""
    stop.set()
    try:
        await asyncio.wait_for(task, timeout=STOP_WAIT_S)
    except (TimeoutError, asyncio.CancelledError):
        task.cancel()
