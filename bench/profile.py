"""Summaries of a py-spy `--format raw` profile (collapsed stacks, one `frames count` a line).

Self time is where a sample's innermost frame is; inclusive time counts a function once per
sample it is anywhere on the stack. `attributed` charges each sample to the innermost extauthz
function on its stack (so time in redis-py under Limiter.check counts for Limiter.check), and
samples with no extauthz frame to "(gRPC server / event loop, outside extauthz code)": the
hot spots the report names are the top three of that list.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

_ENTRY = ("(extauthz/cli/__init__.py)", "(extauthz/cli/serve.py)", "(extauthz/__main__.py)")
# frames every sample of the event-loop thread has: they start the loop, they are not work
_LOOP_ENTRY = {"run (extauthz/server.py)", "run_on_loop (extauthz/server.py)"}
OUTSIDE = "(gRPC server / event loop, outside extauthz code)"
# a frame only the event-loop thread has: asyncio's loop, or the runner when uvloop (C) runs it
_LOOP_FRAMES = ("(asyncio/base_events.py)", "(asyncio/runners.py)")
_FRAME = re.compile(r"^(?P<name>.*) \((?P<file>[^()]*?)(?::\d+)?\)$")


def _short(path: str) -> str:
    for marker in ("site-packages/", "lib/python3.11/", "/work/main/"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path


def frame_key(frame: str) -> str:
    m = _FRAME.match(frame.strip())
    if m is None:
        return frame.strip()
    return f"{m['name']} ({_short(m['file'])})"


def summarise_raw(text: str, top: int = 10) -> dict[str, Any]:
    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    attributed: Counter[str] = Counter()
    total = 0
    other_threads = 0
    for line in text.splitlines():
        stack, _, count_s = line.rpartition(" ")
        if not stack or not count_s.isdigit():
            continue
        count = int(count_s)
        parts = stack.split(";")
        if parts and (parts[0].startswith(("thread ", "process ")) or "(0x" in parts[0]):
            parts = parts[1:]  # a thread / process label, not a frame
        frames = [frame_key(f) for f in parts if f]
        # Only the event-loop thread runs decisions; the others (decision-log writer, metrics
        # server, gRPC's poller) mostly wait, which py-spy cannot always tell from work.
        if not frames or not any(f.endswith(_LOOP_FRAMES) for f in frames):
            other_threads += count
            continue
        total += count
        self_time[frames[-1]] += count
        for key in set(frames):
            inclusive[key] += count
        own_frames = [
            f
            for f in frames
            if "(extauthz/" in f and not f.endswith(_ENTRY) and f not in _LOOP_ENTRY
        ]
        attributed[own_frames[-1] if own_frames else OUTSIDE] += count

    def share(c: Counter[str], keys: list[tuple[str, int]]) -> list[dict[str, Any]]:
        return [
            {"function": k, "samples": n, "share": round(n / max(total, 1), 4)} for k, n in keys
        ]

    own = [
        (k, n)
        for k, n in inclusive.most_common()
        if "(extauthz/" in k and not k.endswith(_ENTRY) and k not in _LOOP_ENTRY
    ]
    return {
        "samples": total,
        "other_thread_samples": other_threads,
        "self": share(self_time, self_time.most_common(top)),
        "inclusive_extauthz": share(inclusive, own[:top]),
        "attributed": share(attributed, attributed.most_common(top)),
    }
