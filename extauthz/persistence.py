"""Does the service's Redis keep its state (API keys, devices, quarantines) across a restart?

Checked once at start-up, off the request path: a Redis without AOF or RDB snapshots loses
every credential when it restarts, and the service then answers 401 to keys it issued."""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)


async def redis_persists(redis: Any) -> bool | None:
    """True: AOF on or RDB snapshots configured; False: neither; None: cannot tell (CONFIG
    renamed or disabled, as managed Redis services often do, or Redis unreachable)."""
    try:
        config = await redis.config_get("appendonly", "save")
    except Exception:  # a start-up diagnostic never stops the service
        return None
    if not isinstance(config, dict) or "appendonly" not in config:
        return None  # e.g. a cluster client answering per node
    appendonly, save = str(config["appendonly"]), str(config.get("save", ""))
    return appendonly == "yes" or bool(save.strip())


async def warn_if_not_persistent(redis: Any) -> bool | None:
    """Log a warning when Redis would lose the service's state on a restart; the verdict."""
    persists = await redis_persists(redis)
    if persists is False:
        log.warning(
            "Redis has persistence off (appendonly no, no save points): API keys, devices and "
            "quarantines are lost when it restarts; run it with appendonly yes (see README, "
            "'Production Redis')"
        )
    elif persists is None:
        log.info("could not read Redis' persistence settings (CONFIG unavailable): check it")
    return persists
