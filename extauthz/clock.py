"""The one injectable clock: token expiry, key expiry and rate windows all read it."""

from __future__ import annotations

import time
from collections.abc import Callable

Clock = Callable[[], float]  # seconds since the epoch

system_clock: Clock = time.time
