"""Golden scores of the default detector ensembles on seeded series (guards speed work).

Every kind's default ensemble (``build_detector({"kind": ...})``, as the flow
builds them) is fed a seeded, realistic series of ~1.8 days with anomalies
of several kinds, gaps and odd values, and every ``AnomalyScore`` it returns
(all fields, the explanation included) is encoded with msgspec (floats in
their shortest exact form) and hashed in chunks of ``CHUNK`` steps.
``tests/online_ml_golden.json`` holds those digests, taken from the code
before an optimisation; ``test_online_ml.py::test_default_ensembles_match_
the_golden_scores`` recomputes them, so a speed change that moves any score
by one ulp fails and names the series and the first chunk that differs.

When a change of scores is *meant* (a quality change), regenerate and commit
the file with that change, saying so in the commit message:

    .venv/bin/python tests/online_ml_golden.py --write

The file holds digests only. To see *how much* two versions of the code
differ, dump every score from each (``PYTHONPATH=<other tree>`` runs the
other one) and compare: the largest differences of score, raw, expected and
the band per series, and the steps where direction or explanation differ:

    PYTHONPATH=/tmp/base .venv/bin/python tests/online_ml_golden.py --dump /tmp/a.jsonl
    .venv/bin/python tests/online_ml_golden.py --dump /tmp/b.jsonl
    .venv/bin/python tests/online_ml_golden.py --compare /tmp/a.jsonl /tmp/b.jsonl

>>> [c.name for c in cases()][:3]
['count', 'count_seller', 'sum']
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec

T0 = datetime(2026, 11, 16, tzinfo=UTC)  # a Monday
SEED = 20261201
STEPS = 2600
GRACE = 300  # most of the series is warm, so calibrated scores are compared, not zeros
CHUNK = 200
RESCORE_EVERY = 50  # score_one before update at these steps: the cached-verdict path too
PATH = Path(__file__).with_name("online_ml_golden.json")

Step = tuple[datetime, float | None, float | None]


@dataclass(frozen=True)
class Case:
    """One seeded series and the kind whose default ensemble scores it."""

    name: str
    kind: str
    series: str
    steps: list[Step]


def poisson_draw(rng: random.Random, lam: float) -> int:
    k, p, u = 0, math.exp(-lam), rng.random()
    while u > p and k < 1000:
        u -= p
        k += 1
        p *= lam / k
    return k


def daily_factor(i: int) -> float:
    return 1.0 + 0.6 * math.sin(2 * math.pi * (i % 1440) / 1440.0)


def _odd(i: int, x: float | None) -> float | None:
    """A few unusable inputs the flow may pass on: NaN, inf, a huge and a negative value."""
    return {700: math.nan, 701: math.inf, 702: 1e300, 703: -5.0}.get(i, x)


def _counts(rng: random.Random, base: float, steps: int) -> list[Step]:
    out: list[Step] = []
    for i in range(steps):
        lam = base * daily_factor(i)
        if 1800 <= i < 1830:
            lam *= 3.0  # surge
        elif 2100 <= i < 2130:
            lam *= 0.2  # drop
        k = 0 if 2300 <= i < 2312 else poisson_draw(rng, lam)  # the stream stops
        x = float(k) if k else None
        out.append((T0 + timedelta(minutes=i), _odd(i, x), x))
    return out


def _amounts(rng: random.Random, base: float, mean: bool, steps: int) -> list[Step]:
    out: list[Step] = []
    for i in range(steps):
        lam = base * daily_factor(i)
        if 2200 <= i < 2230:
            lam *= 0.3  # fewer orders
        n = 0 if 2400 <= i < 2406 else poisson_draw(rng, lam)
        keep = 0.4 if 1800 <= i < 1840 else 1.0  # each order worth 60% less
        total = sum(40.0 * rng.lognormvariate(0.0, 0.8) for _ in range(n)) * keep
        if i == 2000 and n:
            total += 5000.0  # one huge order
        x = (total / n if mean else total) if n else None
        out.append((T0 + timedelta(minutes=i), _odd(i, x), float(n) if n else None))
    return out


def _ratio(rng: random.Random, base: float, steps: int) -> list[Step]:
    out: list[Step] = []
    for i in range(steps):
        n = 0 if 2300 <= i < 2310 else poisson_draw(rng, base * daily_factor(i))
        p = 0.3 if 1800 <= i < 1830 else 0.03  # failure spike
        k = sum(rng.random() < p for _ in range(n))
        x = k / n if n else None
        out.append((T0 + timedelta(minutes=i), _odd(i, x), float(n) if n else None))
    return out


def _distinct(rng: random.Random, base: float, steps: int) -> list[Step]:
    out: list[Step] = []
    for i in range(steps):
        lam = base * daily_factor(i) * (1.5 if 1900 <= i < 2000 else 1.0)  # a slow rise
        users = poisson_draw(rng, lam)
        x = float(users) if users else None
        n = float(users + poisson_draw(rng, lam / 2)) if users else None
        out.append((T0 + timedelta(minutes=i), _odd(i, x), n))
    return out


def cases(steps: int = STEPS) -> list[Case]:
    """The seeded series, one per default kind (tenant and seller sizes where both occur).

    The anomalies sit at fixed steps (1800-2410); a longer series goes on as normal traffic
    (the benchmark, ``bench/bench_online_ml.py``, feeds the same series).
    """
    rng = random.Random(SEED)
    n = steps
    return [
        Case("count", "count", "acme|orders||1m", _counts(rng, 12.0, n)),
        Case("count_seller", "count", "acme|orders|seller_id=s-1|1m", _counts(rng, 0.8, n)),
        Case("sum", "sum", "acme|gmv||1m", _amounts(rng, 12.0, False, n)),
        Case("sparse_sum", "sparse_sum", "acme|gmv|seller_id=s-1|1m", _amounts(rng, 1.2, False, n)),
        Case("ratio", "ratio", "acme|payment_failure_rate||1m", _ratio(rng, 15.0, n)),
        Case(
            "ratio_seller", "ratio", "acme|payment_failure_rate|seller_id=s-1|1m", _ratio(rng, 2, n)
        ),
        Case("distinct", "distinct", "acme|active_users||1m", _distinct(rng, 40.0, n)),
        Case("level", "level", "acme|order_value||1m", _amounts(rng, 6.0, True, n)),
    ]


def scores(case: Case) -> Iterator[Any]:
    """Every score the case's default ensemble gives, in order (score_one ones included)."""
    from linkpulse.online_ml import build_detector

    det = build_detector({"kind": case.kind, "grace": GRACE}, series=case.series)
    for i, (t, x, n) in enumerate(case.steps):
        if i % RESCORE_EVERY == 0:
            yield det.score_one(t, x, n)
        yield det.update(t, x, n)


def digests(case: Case) -> dict[str, Any]:
    """The case's chunk digests, with a readable summary (pages, max score, last score)."""
    enc = msgspec.json.Encoder()
    chunks: list[str] = []
    h = hashlib.sha256()
    pages, top, last, k = 0, 0.0, None, 0
    for s in scores(case):
        h.update(enc.encode(s))
        k += 1
        if k % CHUNK == 0:
            chunks.append(h.hexdigest()[:16])
            h = hashlib.sha256()
        pages += s.score >= 0.99
        top = max(top, s.score)
        last = s
    chunks.append(h.hexdigest()[:16])
    return {
        "kind": case.kind,
        "series": case.series,
        "scores": k,
        "pages": pages,
        "max_score": top,
        "chunks": chunks,
        "last": json.loads(enc.encode(last)),
    }


def compute() -> dict[str, Any]:
    return {
        "about": "digests of every score of the default ensembles: tests/online_ml_golden.py",
        "seed": SEED,
        "steps": STEPS,
        "grace": GRACE,
        "chunk": CHUNK,
        "cases": {c.name: digests(c) for c in cases()},
    }


def dump(path: Path) -> None:
    """Every score of every case, one JSON line each (``case``, then the score's fields)."""
    enc = msgspec.json.Encoder()
    with path.open("w") as f:
        for c in cases():
            for s in scores(c):
                f.write(json.dumps({"case": c.name, **json.loads(enc.encode(s))}) + "\n")


_NUMBERS = ("score", "raw", "expected", "lower", "upper")


def compare(a: Path, b: Path) -> dict[str, dict[str, Any]]:
    """Per case: the largest |a - b| of each number field, and how many steps differ in text."""
    out: dict[str, dict[str, Any]] = {}
    with a.open() as fa, b.open() as fb:
        for la, lb in zip(fa, fb, strict=True):
            ra, rb = json.loads(la), json.loads(lb)
            d = out.setdefault(ra["case"], {f: 0.0 for f in _NUMBERS} | {"text": 0, "steps": 0})
            d["steps"] += 1
            for f in _NUMBERS:
                va, vb = ra[f], rb[f]
                if va is None or vb is None:
                    d[f] = d[f] if va == vb else math.inf
                else:
                    d[f] = max(d[f], abs(va - vb))
            if (ra["direction"], ra["explanation"]) != (rb["direction"], rb["explanation"]):
                d["text"] += 1
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--write", action="store_true", help=f"(re)write {PATH.name}")
    ap.add_argument("--dump", type=Path, help="write every score to this JSON-lines file")
    ap.add_argument("--compare", type=Path, nargs=2, help="max differences of two dumps")
    args = ap.parse_args()
    if args.dump:
        dump(args.dump)
        return
    if args.compare:
        for name, d in compare(*args.compare).items():
            print(name, " ".join(f"{k}={v:.3g}" for k, v in d.items()))
        return
    got = compute()
    if args.write:
        PATH.write_text(json.dumps(got, indent=1) + "\n")
        print(f"wrote {PATH} (seed {SEED})")
        return
    want = json.loads(PATH.read_text())["cases"]
    for name, d in got["cases"].items():
        same = d["chunks"] == want.get(name, {}).get("chunks")
        print(f"{name:14s} {'same' if same else 'DIFFERENT'}  pages {d['pages']}")


if __name__ == "__main__":
    main()
