"""Small asyncio helpers shared by the services' background tasks.

Every long-lived service (the audit writer, the cache warmer, the stream
broker, the notifier...) owns background tasks it must stop on shutdown. The
stop is the same everywhere: cancel, then wait for each task to finish its
clean-up, without turning the task's own cancellation into the caller's.

>>> import asyncio
>>> async def main() -> bool:
...     task = asyncio.create_task(asyncio.sleep(3600))
...     await asyncio.sleep(0)
...     await cancel_and_wait(task, None)
...     return task.cancelled()
>>> asyncio.run(main())
True
"""

from __future__ import annotations

import asyncio
from typing import Any

__all__ = ["cancel_and_wait"]


async def cancel_and_wait(*tasks: asyncio.Future[Any] | None) -> None:
    """Cancel ``tasks`` (``None`` entries are skipped) and wait until every one has finished.

    A task's ``CancelledError`` is expected and swallowed; the first other
    exception a task ended with is raised once all have finished, as awaiting
    it would. If the *caller* is cancelled while it waits, that cancellation
    propagates: it is not mistaken for the tasks' own.
    """
    pending = [t for t in tasks if t is not None]
    if not pending:
        return
    for task in pending:
        task.cancel()
    await asyncio.wait(pending)
    for task in pending:
        if not task.cancelled() and (failure := task.exception()) is not None:
            raise failure
