"""A model's reference profile: what its expected inputs look like, built from a sample its
owner registers (`extauthz analytics register`; the dev stack registers the demo models'
held-out data). Pure Python, no numpy: bounded sizes make it cheap enough.

- `center`, `scale`: every row is standardised per feature first (z-scores; a feature that
  hardly varies in the sample gets the mean spread as its scale), so no feature's unit
  dominates the distances;
- `points` (+ `labels`): up to POINTS rows the detectors measure distances to (kNN);
- `ood_distance`: the OOD_QUANTILE of the nearest-point distance of the *other* sample rows
  (calibration rows, never in `points`): farther than this is out of distribution;
- `low`, `high`, `range_count`: each feature's range over `points`, and the OOD_QUANTILE of
  how many features of a calibration row fall outside it: more is out of distribution too
  (noise added to real rows moves features real data never moves, e.g. a digit's background);
- `dmin`: the distance of each calibration row to its nearest of the previous HISTORY rows,
  in the order given: the distribution a benign tenant's PRADA distances are compared to;
- `step`: a near-duplicate step: NEAR_FRACTION of the 1st percentile of `dmin`.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import orjson

POINTS = 128
HISTORY = 24  # rows a tenant's new row is compared to (the detectors use the same number)
MAX_SAMPLE = 4_000
MIN_SAMPLE = 16
OOD_QUANTILE = 0.99
NEAR_FRACTION = 0.5
KNN = 5


def quantile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    i = min(len(sorted_values) - 1, max(0, math.ceil(q * len(sorted_values)) - 1))
    return sorted_values[i]


def nearest(row: tuple[float, ...], points: tuple[tuple[float, ...], ...]) -> float:
    return min(math.dist(row, p) for p in points)


def out_of_range(row: tuple[float, ...], low: tuple[float, ...], high: tuple[float, ...]) -> int:
    """How many features of a (standardised) row lie outside [low, high]."""
    return sum(1 for x, lo, hi in zip(row, low, high, strict=True) if x < lo or x > hi)


@dataclass(frozen=True, slots=True)
class Profile:
    model: str
    features: int
    center: tuple[float, ...]
    scale: tuple[float, ...]  # 1 / spread
    points: tuple[tuple[float, ...], ...]
    labels: tuple[int, ...]  # () when the owner gave none
    ood_distance: float
    low: tuple[float, ...]
    high: tuple[float, ...]
    range_count: int
    dmin: tuple[float, ...]  # sorted
    step: float
    sample_size: int

    def standardise(self, row: tuple[float, ...] | list[float]) -> tuple[float, ...]:
        return tuple((x - c) * s for x, c, s in zip(row, self.center, self.scale, strict=True))

    def to_json(self) -> bytes:
        return orjson.dumps(
            {
                "model": self.model,
                "features": self.features,
                "center": self.center,
                "scale": self.scale,
                "points": self.points,
                "labels": self.labels,
                "ood_distance": self.ood_distance,
                "low": self.low,
                "high": self.high,
                "range_count": self.range_count,
                "dmin": self.dmin,
                "step": self.step,
                "sample_size": self.sample_size,
            }
        )

    @classmethod
    def from_json(cls, raw: bytes | str) -> Profile:
        doc = orjson.loads(raw)
        return cls(
            model=doc["model"],
            features=int(doc["features"]),
            center=tuple(map(float, doc["center"])),
            scale=tuple(map(float, doc["scale"])),
            points=tuple(tuple(map(float, p)) for p in doc["points"]),
            labels=tuple(int(v) for v in doc["labels"]),
            ood_distance=float(doc["ood_distance"]),
            low=tuple(map(float, doc["low"])),
            high=tuple(map(float, doc["high"])),
            range_count=int(doc["range_count"]),
            dmin=tuple(float(v) for v in doc["dmin"]),
            step=float(doc["step"]),
            sample_size=int(doc["sample_size"]),
        )


def build_profile(
    model: str, rows: list[list[float]], labels: list[int] | None = None, seed: int = 0
) -> Profile:
    """A profile from at least 40 rows of one width (ValueError otherwise). Deterministic."""
    if len(rows) < MIN_SAMPLE:
        raise ValueError(f"a reference sample needs at least {MIN_SAMPLE} rows")
    width = len(rows[0])
    if width == 0 or any(len(r) != width for r in rows):
        raise ValueError("every row of a reference sample has the same, non-zero width")
    if labels is not None and len(labels) != len(rows):
        raise ValueError("labels: one per row")
    n = len(rows)
    center = [math.fsum(r[j] for r in rows) / n for j in range(width)]
    spread = [math.sqrt(math.fsum((r[j] - center[j]) ** 2 for r in rows) / n) for j in range(width)]
    floor = max(math.fsum(spread) / width * 0.1, 1e-9)
    scale = tuple(1.0 / max(s, floor) for s in spread)
    rows = [[(x - c) * s for x, c, s in zip(r, center, scale, strict=True)] for r in rows]
    order = list(range(len(rows)))[:MAX_SAMPLE]
    random.Random(seed).shuffle(order)  # noqa: S311 - a reproducible split, not a secret
    n_points = min(POINTS, len(order) // 2)
    point_ids, calib_ids = order[:n_points], order[n_points:]
    points = tuple(tuple(map(float, rows[i])) for i in point_ids)
    calib = [tuple(map(float, rows[i])) for i in sorted(calib_ids)]  # the owner's order
    ood = sorted(nearest(r, points) for r in calib)
    low = tuple(min(p[j] for p in points) for j in range(width))
    high = tuple(max(p[j] for p in points) for j in range(width))
    outside = sorted(out_of_range(r, low, high) for r in calib)
    dmin = []
    for i, row in enumerate(calib[1:], start=1):
        d = nearest(row, tuple(calib[max(0, i - HISTORY) : i]))
        if d > 0:  # exact repeats are not steps (the detectors skip them too)
            dmin.append(d)
    dmin.sort()
    return Profile(
        model=model,
        features=width,
        center=tuple(center),
        scale=scale,
        points=points,
        labels=tuple(int(labels[i]) for i in point_ids) if labels is not None else (),
        ood_distance=quantile(ood, OOD_QUANTILE),
        low=low,
        high=high,
        range_count=int(quantile([float(v) for v in outside], OOD_QUANTILE)),
        dmin=tuple(dmin),
        step=NEAR_FRACTION * quantile(dmin, 0.01),
        sample_size=len(order),
    )
