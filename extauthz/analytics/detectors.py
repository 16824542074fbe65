"""The detectors: per tenant (subject and model), a bounded state updated once per feature row,
and scores in [0, 1] with their evidence. Pure and synchronous (the worker times them).

(a) `ood`     share of the tenant's last WINDOW rows farther from the model's reference sample
              than the sample's own 99th percentile (Profile.ood_distance), or with more
              features outside the sample's ranges than 99 % of its own rows
              (Profile.range_count): noise, sweeps, noise added to real rows.
(b) `prada`   PRADA-style (Juuti et al. 2019): the distribution of each row's distance to the
              nearest of the tenant's previous HISTORY rows, tested against the same distances
              in the reference sample; the score is the two-sample Kolmogorov-Smirnov D.
              (PRADA tests normality with Shapiro-Wilk; comparing with the owner's sample is
              the same idea without assuming a shape.) Needs MIN_DISTANCES distances.
(c) `neardup` Blacklight-style (Li et al. 2022) small steps: share of rows closer than
              Profile.step (but not identical) to one of the tenant's previous rows: a
              decision-based attack walking along a boundary. Exact repeats are not counted.
(d) `output`  output side, from what the gateway sees: the share of rows near a decision
              boundary (the k nearest reference points disagree: at most KNN_AGREE of KNN
              agree; a proxy for the model's confidence, which only the response shows); the
              evidence adds the share of requests asking for score outputs and the classes
              covered.
(e) `network` is computed by the worker over every subject of a source network, and `shared`
              over every subject wherever it comes from: the share of the tenant's rows that
              are out of distribution or near-duplicates and whose fingerprint (a coarse grid
              cell) SHARED_BY subjects sent within two minutes (worker.py, Redis HyperLogLogs).
"""

from __future__ import annotations

import bisect
import hashlib
import heapq
import math
from array import array
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any

from extauthz.analytics.profile import HISTORY, KNN, Profile, out_of_range

WINDOW = 64  # rows the shares are computed over
MIN_DISTANCES = 20
KNN_AGREE = 2  # 2 of 5 nearest reference points or fewer agree: near a boundary
FINGERPRINT_CELLS = 4
DETECTORS = ("ood", "prada", "neardup", "output", "shared")


@dataclass(frozen=True, slots=True)
class RowFlags:
    ood: bool
    dmin: float  # distance to the nearest previous row; -1 with no history
    near: bool
    boundary: bool
    label: int  # the majority label of the nearest reference points; -1 without labels
    scores: bool  # the request asked for score outputs
    fingerprint: str = ""  # a flagged row's coarse cell (fingerprint()); "" when not flagged


@dataclass
class TenantState:
    """One subject on one model: at most HISTORY rows and WINDOW flags (bounded memory)."""

    history: deque[array[float]] = field(default_factory=lambda: deque(maxlen=HISTORY))
    window: deque[RowFlags] = field(default_factory=lambda: deque(maxlen=WINDOW))
    # per flagged row, whether other subjects sent its fingerprint too (set by the worker after
    # its Redis round trip; unflagged rows append False)
    shared: deque[bool] = field(default_factory=lambda: deque(maxlen=WINDOW))
    rows: int = 0
    first_ms: int = 0
    last_ms: int = 0


def score_row(
    profile: Profile, state: TenantState, row: tuple[float, ...], scores: bool
) -> RowFlags:
    """Flag one row (as sent: standardised here) and add it to the tenant's state."""
    row = profile.standardise(row)
    dists = [math.dist(row, p) for p in profile.points]
    ood = min(dists) > profile.ood_distance or (
        out_of_range(row, profile.low, profile.high) > profile.range_count
    )
    label, boundary = -1, False
    if profile.labels:
        votes: dict[int, int] = {}
        for _, lab in heapq.nsmallest(KNN, zip(dists, profile.labels, strict=True)):
            votes[lab] = votes.get(lab, 0) + 1
        label, top = max(votes.items(), key=lambda kv: (kv[1], -kv[0]))
        boundary = top <= KNN_AGREE
    dmin = min((math.dist(row, h) for h in state.history), default=-1.0)
    near = 0 < dmin < profile.step
    # only rows off the data (a, c): benign clients replaying one public dataset share real
    # rows, and real rows near a boundary are common
    print_ = fingerprint(profile, row) if ood or near else ""
    flags = RowFlags(ood, dmin, near, boundary, label, scores, print_)
    if not print_:
        state.shared.append(False)
    state.history.append(array("d", row))
    state.window.append(flags)
    state.rows += 1
    return flags


def fingerprint(profile: Profile, row: tuple[float, ...]) -> str:
    """A standardised row's cell on a grid of FINGERPRINT_CELLS x the profile's small step:
    rows a step or two apart mostly share it. Compared across subjects (the worker, in Redis)."""
    cell = profile.step * FINGERPRINT_CELLS or 1.0
    packed = array("q", (math.floor(x / cell) for x in row)).tobytes()
    return hashlib.blake2b(packed, digest_size=8).hexdigest()


def ks_distance(sample: list[float], reference: tuple[float, ...]) -> float:
    """Two-sample Kolmogorov-Smirnov D between `sample` and a sorted `reference`."""
    if not sample or not reference:
        return 0.0
    sample = sorted(sample)
    n, m = len(sample), len(reference)
    d = 0.0
    for i, x in enumerate(sample):
        below = bisect.bisect_right(reference, x) / m
        d = max(d, abs((i + 1) / n - below), abs(i / n - bisect.bisect_left(reference, x) / m))
    return d


def tenant_scores(profile: Profile, state: TenantState) -> tuple[dict[str, float], dict[str, Any]]:
    """(scores in [0, 1] per detector, evidence) over the tenant's window."""
    window = list(state.window)
    n = len(window) or 1
    dists = [f.dmin for f in window if f.dmin > 0]
    prada = ks_distance(dists, profile.dmin) if len(dists) >= MIN_DISTANCES else 0.0
    labelled = [f for f in window if f.label >= 0]
    scores = {
        "ood": sum(f.ood for f in window) / n,
        "prada": prada,
        "neardup": sum(f.near for f in window) / n,
        "output": sum(f.boundary for f in labelled) / len(labelled) if labelled else 0.0,
        "shared": sum(state.shared) / n,
    }
    evidence = {
        "rows": state.rows,
        "window": len(window),
        "ood_rows": sum(f.ood for f in window),
        "near_rows": sum(f.near for f in window),
        "boundary_rows": sum(f.boundary for f in labelled),
        "shared_rows": sum(state.shared),
        "median_step": sorted(dists)[len(dists) // 2] if dists else None,
        "reference_step": profile.dmin[len(profile.dmin) // 2] if profile.dmin else None,
        "score_outputs_share": sum(f.scores for f in window) / n,
        "classes": len({f.label for f in labelled}),
    }
    return {k: round(v, 4) for k, v in scores.items()}, evidence


class Tenants:
    """Least recently used tenant states, at most `size` (memory is bounded per worker)."""

    def __init__(self, size: int = 4_000) -> None:
        self._size = size
        self._states: OrderedDict[tuple[str, str], TenantState] = OrderedDict()

    def get(self, subject: str, model: str) -> TenantState:
        key = (subject, model)
        state = self._states.get(key)
        if state is None:
            state = self._states[key] = TenantState()
            if len(self._states) > self._size:
                self._states.popitem(last=False)
        else:
            self._states.move_to_end(key)
        return state

    def __len__(self) -> int:
        return len(self._states)
