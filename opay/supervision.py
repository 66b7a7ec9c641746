"""Background tasks that never die quietly: a crash is logged and the task restarted.

A timer loop, a revocation listener or a webhook sender that raised once would otherwise
stop for good with nothing said, and payments would wait on it for ever.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Awaitable, Callable

log = logging.getLogger("opay.supervision")

RESTART_MIN_SECONDS = 0.5
RESTART_MAX_SECONDS = 30.0
# A run that lasted this long was healthy: the next crash restarts it quickly again.
HEALTHY_SECONDS = 60.0


async def supervise(name: str, run: Callable[[], Awaitable[None]]) -> None:
    """Run `run()` for ever: restarted after any exception, with a doubling pause
    (RESTART_MIN_SECONDS up to RESTART_MAX_SECONDS) so a crash loop cannot spin."""
    pause = RESTART_MIN_SECONDS
    loop = asyncio.get_running_loop()
    while True:
        started = loop.time()
        try:
            await run()
            log.error("background task %s returned; restarting it", name)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("background task %s crashed; restarting it in %.1f s", name, pause)
        if loop.time() - started >= HEALTHY_SECONDS:
            pause = RESTART_MIN_SECONDS
        await asyncio.sleep(pause)
        pause = min(RESTART_MAX_SECONDS, pause * 2)
