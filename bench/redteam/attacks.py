"""One red-team client, run in `.venv-redteam`: `python -m bench.redteam.attacks SPEC OUT`.

SPEC (JSON, written by `run.py`) names the attack, Envoy's port, the callers (API key, source
address, and for the evaluator their Redis keys), the row budget and the deadline; OUT gets the
callers' request records and the attack's curve. Attacks, all against `digits` (64 features
0..16, 10 classes, the demo's LogisticRegression):

- `eqsolve`: equation solving with scores (Tramèr et al., USENIX Security 2016, multiclass
  logistic regression): uniform random queries, centred log-probabilities are linear in the
  input, least squares (minimum norm below 65 queries) recovers the weights.
- `knockoff`: ART `KnockoffNets` (random strategy, labels only) training a scikit-learn logistic
  regression on labels of perturbed copies of 20 public digits.
- `copycat`: ART `CopycatCNN` (labels only) with a non-problem-domain pool: 8×8 patches of the
  natural images scikit-learn ships (`load_sample_images`), as the Copycat paper used ImageNet.
- `hopskipjump`, `boundary`: ART `HopSkipJump` / `BoundaryAttack`, untargeted L2, labels only,
  against one held-out digit; success = an adversarial example within `eps` (L2) of it.
- `sybil`: `knockoff` spread over ten keys from ten addresses of one /24.
- `benign`: several clients replaying held-out digits at a human rate.

The victim's copy (`model.joblib` from the stack's model repository, same scikit-learn) is the
evaluator's: it says whether a response was degraded and scores surrogates; the attacker never
reads it. Queries are rows (model evaluations); one row per request unless `rows_per_request`.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import joblib
import numpy as np
from art.attacks.evasion import BoundaryAttack, HopSkipJump
from art.attacks.extraction import CopycatCNN, KnockoffNets
from art.estimators.classification import BlackBoxClassifier
from art.estimators.classification.scikitlearn import ScikitlearnClassifier
from sklearn.datasets import load_digits, load_sample_images
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split

from bench.redteam.client import Blocked, Budget, Caller, Exhausted, Probe, Stopped

N_FEATURES, N_CLASSES, CLIP = 64, 10, (0.0, 16.0)


def held_out() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(eval rows, public rows, public labels): the demo's held-out quarter of digits (the split
    of modelserver/train.py) cut in two halves, as the analytics reference sample is: the first
    half (the model owner's registered reference) scores surrogates; the second ("replay") is
    what benign clients send and the public data attackers start from."""
    X, y = load_digits(return_X_y=True)
    _, X_te, _, y_te = train_test_split(X, y, test_size=0.25, random_state=0, stratify=y)
    half = len(X_te) // 2
    return X_te[:half], X_te[half:], y_te[half:]


class Oracle:
    """The victim's exact copy: the evaluator's ground truth, never the attacker's."""

    def __init__(self, model_path: str) -> None:
        self.model = joblib.load(model_path)
        self.eval_x, self.public_x, self.public_y = held_out()
        self.eval_y = self.model.predict(self.eval_x)

    def degraded(
        self,
        rows: Sequence[Sequence[float]],
        labels: list[int],
        proba: list[list[float]] | None,
        asked_proba: bool,
    ) -> bool:
        x = np.asarray(rows, dtype=float)
        if list(self.model.predict(x)) != labels:
            return True
        if not asked_proba:
            return False
        if proba is None:
            return True
        got = np.asarray(proba, dtype=float)
        return got.shape != (len(x), N_CLASSES) or not np.allclose(
            got, self.model.predict_proba(x), rtol=0, atol=1e-6
        )

    def agreement(self, predict: Callable[[np.ndarray], np.ndarray]) -> float:
        return float(np.mean(predict(self.eval_x) == self.eval_y))


class Transcript:
    """Every answered row, in answer order, across the attack's callers."""

    def __init__(self) -> None:
        self.x: list[np.ndarray] = []
        self.labels: list[int] = []
        self.proba: list[np.ndarray | None] = []
        self._lock = threading.Lock()

    def add(self, x: np.ndarray, labels: list[int], proba: list[list[float]] | None) -> None:
        with self._lock:
            for i, row in enumerate(x):
                self.x.append(np.asarray(row, dtype=float))
                self.labels.append(int(labels[i]))
                self.proba.append(None if proba is None else np.asarray(proba[i]))

    def __len__(self) -> int:
        return len(self.labels)


class Team:
    """An attacker's callers; a batch is split over the live ones, which send in parallel."""

    def __init__(self, callers: list[Caller], transcript: Transcript) -> None:
        self.callers = callers
        self.transcript = transcript

    def infer(self, x: np.ndarray, proba: bool) -> tuple[list[int], list[list[float]] | None]:
        live = [c for c in self.callers if not c.blocked]
        if not live:
            raise Blocked("every caller is blocked")
        parts = np.array_split(np.arange(len(x)), min(len(live), len(x)))
        results: list[Any] = [None] * len(parts)

        def work(i: int, caller: Caller, idx: np.ndarray) -> None:
            try:
                rows = x[idx]
                labels, probs = caller.infer(rows.tolist(), proba)
                self.transcript.add(rows, labels, probs)
                results[i] = (labels, probs)
            except Stopped as exc:
                results[i] = exc

        if len(parts) == 1:
            work(0, live[0], parts[0])
        else:
            threads = [
                threading.Thread(target=work, args=(i, live[i], idx)) for i, idx in enumerate(parts)
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        for r in results:
            if isinstance(r, Stopped):
                raise r
        labels = [v for r in results for v in r[0]]
        probs = None if any(r[1] is None for r in results) else [v for r in results for v in r[1]]
        return labels, probs


def one_hot(labels: list[int]) -> np.ndarray:
    out = np.zeros((len(labels), N_CLASSES))
    out[np.arange(len(labels)), labels] = 1.0
    return out


def black_box(team: Team) -> BlackBoxClassifier:
    """ART's view of the victim behind Envoy: labels only (one-hot)."""
    return BlackBoxClassifier(
        lambda x: one_hot(team.infer(np.asarray(x, dtype=float), proba=False)[0]),
        input_shape=(N_FEATURES,),
        nb_classes=N_CLASSES,
        clip_values=CLIP,
    )


class Thief(ScikitlearnClassifier):
    """ART's scikit-learn wrapper for the surrogate; ART's extraction attacks pass Keras-style
    `batch_size`/`nb_epochs` to `fit`, which scikit-learn does not take."""

    def fit(self, x: np.ndarray, y: np.ndarray, **kwargs: Any) -> None:
        super().fit(x, y)


def surrogate() -> LogisticRegression:
    return LogisticRegression(max_iter=2000)


def checkpoints(total: int, extra: Sequence[int] = ()) -> list[int]:
    points = set(np.unique(np.round(np.geomspace(10, max(total, 10), 18)).astype(int)))
    points.update(n for n in extra if 0 < n <= total)
    points.add(total)
    return sorted(int(n) for n in points if 0 < n <= total)


# ---- scoring a transcript prefix


def fit_labels(tr: Transcript, n: int, oracle: Oracle) -> float:
    """Agreement of a logistic regression trained on the first n answered labels."""
    y = np.asarray(tr.labels[:n])
    if len(set(y)) < 2:
        return float(np.mean(oracle.eval_y == (y[0] if len(y) else -1)))
    model = surrogate().fit(np.asarray(tr.x[:n]), y)
    return oracle.agreement(model.predict)


def solve_equations(tr: Transcript, n: int, oracle: Oracle) -> float:
    """Tramèr's equation solving on the first n answers: log p_j(x) = w_j·x + b_j − log Z(x),
    so the log-probabilities centred per row are linear in [x, 1]; least squares gives the
    weights (exact from 65 exact answers; minimum norm below). An answer without scores (a
    defense degraded it to labels) counts as a one-hot vector, as the attacker gets nothing
    better."""
    x = np.asarray(tr.x[:n])
    floors = []
    rows = []
    for i in range(n):
        p = tr.proba[i]
        rows.append(one_hot([tr.labels[i]])[0] if p is None else p)
        # scores rounded to 2 decimals (a degraded answer) hide anything below 0.005: the
        # attacker, seeing only multiples of 0.01, floors there rather than at zero
        rounded = p is None or np.allclose(np.asarray(p) * 100, np.round(np.asarray(p) * 100))
        floors.append(0.005 if rounded else 1e-300)
    logp = np.log(np.maximum(np.asarray(rows), np.asarray(floors)[:, None]))
    centred = logp - logp.mean(axis=1, keepdims=True)
    design = np.hstack([x, np.ones((n, 1))])
    exact = np.asarray(floors) < 0.005
    if exact.sum() >= 10:  # once answers turn coarse, the attacker keeps to the exact ones
        design, centred = design[exact], centred[exact]
    weights, *_ = np.linalg.lstsq(design, centred, rcond=None)

    def predict(q: np.ndarray) -> np.ndarray:
        return np.argmax(np.hstack([q, np.ones((len(q), 1))]) @ weights, axis=1)

    return oracle.agreement(predict)


def best_distortion(tr: Transcript, n: int, x0: np.ndarray, y0: int) -> float | None:
    """L2 distance from x0 of the nearest answered row labelled other than y0 (the best
    adversarial example the attacker holds after n queries); None before the first."""
    best = None
    for i in range(min(n, len(tr))):
        if tr.labels[i] != y0:
            d = float(np.linalg.norm(tr.x[i] - x0))
            best = d if best is None or d < best else best
    return best


# ---- the attacks


def run_extraction(spec: dict[str, Any], team: Team, oracle: Oracle) -> dict[str, Any]:
    name, budget = spec["attack"], spec["budget"]
    rng = np.random.default_rng(spec.get("seed", 1))
    art_final = None
    stopped = ""
    try:
        if name == "eqsolve":
            queries = rng.uniform(*CLIP, size=(budget, N_FEATURES))
            step = spec.get("step", 5)
            for at in range(0, budget, step):
                team.infer(queries[at : at + step], proba=True)
        else:
            if name == "copycat":
                pool = copycat_pool(rng, budget * 2)
            else:
                seeds = oracle.public_x[: spec.get("seeds", 20)]
                pool = knockoff_pool(rng, seeds, budget * 2, spec.get("sigma", 3.0))
            cls = CopycatCNN if name == "copycat" else KnockoffNets
            extraction = cls(
                black_box(team),
                batch_size_fit=64,
                batch_size_query=spec.get("step", 10),
                nb_epochs=1,
                nb_stolen=budget,
                **({"verbose": False} if cls is KnockoffNets else {}),
            )
            np.random.seed(spec.get("seed", 1))  # ART samples the pool with np.random
            thief = extraction.extract(
                pool, thieved_classifier=Thief(surrogate(), clip_values=CLIP)
            )
            art_final = oracle.agreement(lambda q: np.argmax(thief.predict(q), axis=1))
    except Stopped as exc:
        stopped = type(exc).__name__
    score = solve_equations if name == "eqsolve" else fit_labels
    return {"metric": "agreement", "stopped": stopped, "art_final": art_final, "score": score}


def run_evasion(spec: dict[str, Any], team: Team, oracle: Oracle) -> dict[str, Any]:
    index = spec.get("target", 0)
    x0 = oracle.public_x[index]
    y0 = int(oracle.model.predict(x0[None])[0])
    # The evaluator's yardstick: the victim is linear, so the smallest L2 step that changes x0's
    # label is the distance to the nearest of its class boundaries (clipping ignored: a lower
    # bound). Success is an adversarial example within eps_factor times that.
    w, b = oracle.model.coef_, oracle.model.intercept_
    d_star = min(
        float(((w[y0] - w[j]) @ x0 + b[y0] - b[j]) / np.linalg.norm(w[y0] - w[j]))
        for j in range(N_CLASSES)
        if j != y0
    )
    eps = spec.get("eps_factor", 1.5) * d_star
    victim = black_box(team)
    np.random.seed(spec.get("seed", 1))
    if spec["attack"] == "hopskipjump":
        attack: Any = HopSkipJump(
            victim,
            targeted=False,
            norm=2,
            max_iter=1000,
            max_eval=spec.get("max_eval", 100),
            init_eval=10,
            init_size=20,
            verbose=False,
        )
    else:
        attack = BoundaryAttack(
            victim,
            targeted=False,
            max_iter=100000,
            num_trial=spec.get("num_trial", 10),
            sample_size=spec.get("sample_size", 10),
            init_size=20,
            verbose=False,
        )
    stopped = ""
    try:
        attack.generate(x=x0[None].astype(np.float32))
        stopped = "finished"
    except Stopped as exc:
        stopped = type(exc).__name__

    def score(tr: Transcript, n: int, _: Oracle) -> float | None:
        return best_distortion(tr, n, x0, y0)

    return {
        "metric": "distortion",
        "stopped": stopped,
        "eps": eps,
        "d_star": d_star,
        "x0_norm": float(np.linalg.norm(x0)),
        "score": score,
    }


def knockoff_pool(
    rng: np.random.Generator, seeds: np.ndarray, n: int, sigma: float = 3.0
) -> np.ndarray:
    """Perturbed copies of public digits: shifted by up to a pixel, Gaussian noise (sigma)."""
    picks = seeds[rng.integers(0, len(seeds), n)].reshape(n, 8, 8)
    shifted = np.stack(
        [np.roll(img, (rng.integers(-1, 2), rng.integers(-1, 2)), axis=(0, 1)) for img in picks]
    )
    noisy = shifted.reshape(n, N_FEATURES) + rng.normal(0, sigma, (n, N_FEATURES))
    return np.clip(noisy, *CLIP)


def copycat_pool(rng: np.random.Generator, n: int) -> np.ndarray:
    """8×8 patches of scikit-learn's two sample photographs, greyscale, downsampled 8×, scaled to
    0..16: data from another domain, as Copycat used natural images."""
    images = [img.mean(axis=2) for img in load_sample_images().images]
    small = [img[: img.shape[0] // 8 * 8, : img.shape[1] // 8 * 8] for img in images]
    small = [s.reshape(s.shape[0] // 8, 8, s.shape[1] // 8, 8).mean(axis=(1, 3)) for s in small]
    out = np.empty((n, N_FEATURES))
    for i in range(n):
        img = small[rng.integers(0, len(small))]
        r, c = rng.integers(0, img.shape[0] - 8), rng.integers(0, img.shape[1] - 8)
        patch = img[r : r + 8, c : c + 8]
        span = patch.max() - patch.min()
        out[i] = ((patch - patch.min()) / (span if span > 0 else 1) * 16).ravel()
    return out


def run_benign(spec: dict[str, Any], callers: list[Caller], oracle: Oracle) -> dict[str, Any]:
    """Each benign caller replays its own slice of the public held-out digits, one per request,
    at a human rate (a pause drawn from [lo, hi] seconds), asking for scores now and then."""
    lo, hi = spec.get("pause", (1.5, 4.5))
    slices = np.array_split(oracle.public_x, len(callers))

    def replay(i: int, caller: Caller) -> None:
        rng = np.random.default_rng(100 + i)
        rows = slices[i]
        j = 0
        try:
            while True:
                caller.infer([rows[j % len(rows)].tolist()], proba=bool(rng.random() < 0.3))
                j += 1
                time.sleep(float(rng.uniform(lo, hi)))
        except Stopped:
            return

    threads = [threading.Thread(target=replay, args=(i, c)) for i, c in enumerate(callers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"metric": "benign", "stopped": "", "score": None}


def merge_records(callers: list[Caller]) -> list[dict[str, Any]]:
    """Every caller's records in time order, each with `caller` and `q_total` (the attack's
    answered rows before it)."""
    merged = [{**r, "caller": i} for i, c in enumerate(callers) for r in c.records]
    merged.sort(key=lambda r: r["t"])
    total = 0
    for r in merged:
        r["q_total"] = total
        if r["status"] == 200:
            total += r["rows"]
    return merged


def run(spec: dict[str, Any]) -> dict[str, Any]:
    from bench.redteam.client import first_action

    oracle = Oracle(spec["model_path"])
    start = time.monotonic()
    deadline = start + spec["seconds"]
    budget = Budget(spec["budget"])
    callers = [
        Caller(
            spec["port"],
            c["key"],
            c["source"],
            deadline=deadline,
            budget=budget,
            nominal=spec["nominal"],
            rows_per_request=spec.get("rows_per_request", 1),
            max_rate=c.get("max_rate", spec.get("max_rate", 0.0)),
            check=oracle.degraded,
            probe=Probe(
                spec["redis_port"], c["risk_key"], c["quarantine_keys"], spec["risk_fields"]
            ),
            start=start,
        )
        for c in spec["callers"]
    ]
    team = Team(callers, Transcript())
    if spec["attack"] == "benign":
        outcome = run_benign(spec, callers, oracle)
    elif spec["attack"] in ("hopskipjump", "boundary"):
        outcome = run_evasion(spec, team, oracle)
    else:
        outcome = run_extraction(spec, team, oracle)
    elapsed = time.monotonic() - start
    records = merge_records(callers)
    tr = team.transcript
    score = outcome.pop("score")
    action = first_action(records)
    quarantined = [r for r in records if (r.get("probe") or {}).get("quarantined")]
    curve: list[list[Any]] = []
    at_action = at_quarantine = None
    if score is not None and len(tr):
        extra = [action[0]] if action else []
        extra += [quarantined[0]["q_total"]] if quarantined else []
        curve = [[n, score(tr, n, oracle)] for n in checkpoints(len(tr), extra)]
        if action:
            at_action = score(tr, action[0], oracle) if action[0] > 0 else None
        if quarantined and quarantined[0]["q_total"] > 0:
            at_quarantine = score(tr, quarantined[0]["q_total"], oracle)
    return {
        "attack": spec["attack"],
        "quarantined_at": quarantined[0]["q_total"] if quarantined else None,
        "at_quarantine": at_quarantine,
        "degraded_responses": sum(1 for r in records if r.get("degraded")),
        "label": spec.get("label", spec["attack"]),
        "callers": [
            {"source": s["source"], "subject": s["subject"], "policy": c.policy}
            for s, c in zip(spec["callers"], callers, strict=True)
        ],
        "queries": len(tr) if spec["attack"] != "benign" else sum(c.answered for c in callers),
        "requests": len(records),
        "statuses": dict(Counter(str(r["status"]) for r in records)),
        "seconds": round(elapsed, 1),
        "first_action": (
            {"queries": action[0], "kind": action[1], "t": action[2]} if action else None
        ),
        "at_action": at_action,
        "final": curve[-1][1] if curve else None,
        "curve": curve,
        "blocked": any(c.blocked for c in callers),
        "records": records,
        **outcome,
    }


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    spec = json.loads(Path(args[0]).read_text())
    result = run(spec)
    Path(args[1]).write_text(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["Exhausted", "main", "run"]
