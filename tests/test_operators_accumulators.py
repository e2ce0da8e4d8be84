"""Accumulators against brute force: exact families exactly, sketches within their bounds."""

from __future__ import annotations

import math
import pickle

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from linkpulse.operators.accumulators import (
    Distinct,
    DistinctSpec,
    Moments,
    Quantiles,
    QuantileSpec,
    Ratio,
)

finite = st.floats(min_value=-1e300, max_value=1e300, allow_nan=False, allow_infinity=False)
amounts = st.floats(min_value=0.0, max_value=1e12, allow_nan=False, allow_infinity=False)
# None, NaN and +-inf are documented as ignored
junk = st.sampled_from([None, math.nan, math.inf, -math.inf])
values_with_junk = st.lists(st.one_of(finite, junk), max_size=200)


def _clean(xs: list[float | None]) -> list[float]:
    return [x for x in xs if x is not None and math.isfinite(x)]


def _sum_ok(got: float, xs: list[float]) -> bool:
    """Float summation error bound: n * eps * sum(|x|)."""
    exact = math.fsum(xs)
    bound = (len(xs) + 1) * 2.0**-52 * math.fsum(abs(x) for x in xs)
    return abs(got - exact) <= bound


# -- one table per family: empty, missing and extreme values ---------------------------------


@pytest.mark.parametrize(
    ("values", "count", "total", "lo", "hi"),
    [
        ([], 0, 0.0, None, None),
        ([None, None], 0, 0.0, None, None),
        ([math.nan, math.inf, -math.inf], 0, 0.0, None, None),
        ([0.0], 1, 0.0, 0.0, 0.0),
        ([0.0, -0.0, 0.0], 3, 0.0, 0.0, 0.0),
        ([1e300, 1e300], 2, 2e300, 1e300, 1e300),
        ([-1e300, 5.0, None, math.nan], 2, -1e300, -1e300, 5.0),
        ([1.5, 2.5], 2, 4.0, 1.5, 2.5),
    ],
)
def test_moments_table(values, count, total, lo, hi) -> None:
    f = Moments.of(values).fields()
    assert (f["count"], f["sum"], f["min"], f["max"]) == (count, total, lo, hi)
    assert f["mean"] == (total / count if count else None)


@pytest.mark.parametrize(
    ("nums", "dens", "value"),
    [(0, 0, None), (0, 3, 0.0), (1, 4, 0.25), (5, 5, 1.0), (7, 0, None)],
)
def test_ratio_table(nums: int, dens: int, value: float | None) -> None:
    r = Ratio()
    for _ in range(nums):
        r.add_num()
    for _ in range(dens):
        r.add_den()
    assert r.value == value
    assert r.fields() == {"count": dens, "sum": float(nums), "mean": value}


@pytest.mark.parametrize(
    ("values", "count", "distinct"),
    [
        ([], 0, None),
        ([None, ""], 0, None),
        (["u1"], 1, 1.0),
        (["u1", "u1", "u1"], 3, 1.0),
        (["a", "b", None, "c", "a"], 4, 3.0),
    ],
)
def test_distinct_table(values, count, distinct) -> None:
    d = Distinct()
    for v in values:
        d.add(v)
    f = d.fields()
    assert f["count"] == count
    if distinct is None:
        assert f["distinct"] is None
    else:
        assert f["distinct"] == pytest.approx(distinct, abs=1e-6)


@pytest.mark.parametrize(
    ("values", "p50", "p99"),
    [
        ([], None, None),
        ([None, math.nan, math.inf], None, None),
        ([0.0], 0.0, 0.0),
        ([0.0] * 100, 0.0, 0.0),
        ([7.0] * 100, 7.0, 7.0),
        ([1e12, 0.01], 0.01, 0.01),  # rank floor(q * (n - 1)) = 0
        ([float(x) for x in range(1, 1001)], 500.0, 990.0),
    ],
)
def test_quantiles_table(values, p50, p99) -> None:
    q = Quantiles()
    for v in values:
        q.add(v)
    f = q.fields()
    for got, want in ((f["p50"], p50), (f["p99"], p99)):
        if want is None:
            assert got is None
        else:
            assert got == pytest.approx(want, rel=0.01, abs=1e-12)


# -- brute force on random data ---------------------------------------------------------------


@given(values_with_junk)
def test_moments_equal_brute_force(xs: list[float | None]) -> None:
    clean = _clean(xs)
    f = Moments.of(xs).fields()
    assert f["count"] == len(clean)
    assert f["min"] == (min(clean) if clean else None)
    assert f["max"] == (max(clean) if clean else None)
    assert _sum_ok(f["sum"], clean)
    if clean:
        assert f["mean"] == f["sum"] / len(clean)


@settings(derandomize=True, max_examples=60)
@given(st.lists(st.integers(0, 50_000), max_size=3000))
def test_distinct_within_documented_error(ids: list[int]) -> None:
    spec = DistinctSpec()
    d = spec.initialize()
    for i in ids:
        d.add(f"user-{i}")
    true = len(set(ids))
    if not ids:
        assert d.fields()["distinct"] is None
        return
    assert abs(d.estimate - true) <= spec.error_bound(3) * true + 1e-6


@settings(derandomize=True, max_examples=60)
@given(st.lists(amounts, min_size=1, max_size=500))
def test_quantiles_within_relative_accuracy(xs: list[float]) -> None:
    spec = QuantileSpec(relative_accuracy=0.01)
    q = spec.initialize()
    for x in xs:
        q.add(x)
    ordered = sorted(xs)
    for p in (0.0, 0.5, 0.95, 0.99, 1.0):
        want = ordered[int(p * (len(xs) - 1))]
        got = q.quantile(p)
        assert got is not None
        assert abs(got - want) <= spec.relative_accuracy * want + 1e-300


# -- merging any split equals the whole; pickling round trips ---------------------------------


def _split(xs: list, cuts: list[int]) -> list[list]:
    points = sorted({c % (len(xs) + 1) for c in cuts})
    bounds = [0, *points, len(xs)]
    return [xs[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]


@given(values_with_junk, st.lists(st.integers(0, 10_000), max_size=5))
def test_moments_merge_any_split(xs: list[float | None], cuts: list[int]) -> None:
    whole = Moments.of(xs)
    merged = Moments()
    for part in _split(xs, cuts):
        merged.merge(Moments.of(part))
    assert (merged.count, merged.min, merged.max) == (whole.count, whole.min, whole.max)
    assert _sum_ok(merged.sum, _clean(xs))
    assert pickle.loads(pickle.dumps(merged)) == merged


@given(st.lists(st.booleans(), max_size=200), st.lists(st.integers(0, 10_000), max_size=5))
def test_ratio_merge_any_split(flags: list[bool], cuts: list[int]) -> None:
    whole = Ratio()
    for f in flags:
        whole.add(f)
    merged = Ratio()
    for part in _split(flags, cuts):
        r = Ratio()
        for f in part:
            r.add(f)
        merged.merge(r)
    assert merged == whole
    assert merged.value == (sum(flags) / len(flags) if flags else None)
    assert pickle.loads(pickle.dumps(merged)) == merged


@settings(derandomize=True, max_examples=50)
@given(st.lists(st.integers(0, 20_000), max_size=2000), st.lists(st.integers(0, 10**6), max_size=4))
def test_distinct_merge_any_split(ids: list[int], cuts: list[int]) -> None:
    def sketch(part: list[int]) -> Distinct:
        d = Distinct(12)
        for i in part:
            d.add(str(i))
        return d

    whole = sketch(ids)
    merged = Distinct(12)
    for part in _split(ids, cuts):
        merged.merge(sketch(part))
    assert merged.count == whole.count
    # HLL union is lossless (register-wise max): same estimate up to float noise
    assert merged.estimate == pytest.approx(whole.estimate, rel=1e-9)
    back = pickle.loads(pickle.dumps(merged))
    assert back == merged and back.state_key == merged.state_key


@settings(derandomize=True, max_examples=60)
@given(st.lists(amounts, max_size=300), st.lists(st.integers(0, 10**6), max_size=5))
def test_quantiles_merge_any_split(xs: list[float], cuts: list[int]) -> None:
    def sketch(part: list[float]) -> Quantiles:
        q = Quantiles()
        for x in part:
            q.add(x)
        return q

    whole = sketch(xs)
    merged = Quantiles()
    for part in _split(xs, cuts):
        merged.merge(sketch(part))
    # DDSketch bins depend only on the multiset, so quantiles match exactly
    for p in (0.5, 0.95, 0.99):
        assert merged.quantile(p) == whole.quantile(p)
    assert merged.moments.count == whole.moments.count
    assert _sum_ok(merged.moments.sum, xs)
    back = pickle.loads(pickle.dumps(merged))
    assert back == merged
    assert back.copy() == merged


def test_state_keys_name_family_version_and_parameters() -> None:
    assert Moments.state_key == "moments/v1"
    assert Ratio.state_key == "ratio/v1"
    assert DistinctSpec(12).state_key != DistinctSpec(14).state_key
    assert QuantileSpec(0.01).state_key != QuantileSpec(0.02).state_key
    assert Distinct(12).state_key == DistinctSpec(12).state_key
    assert Quantiles(0.02).state_key == QuantileSpec(0.02).state_key


def test_mismatched_parameters_refuse_to_merge() -> None:
    with pytest.raises(ValueError, match="lg_k"):
        Distinct(12).merge(_filled_distinct(14))
    with pytest.raises(ValueError, match="cannot merge quantile"):
        Quantiles(0.01).merge(Quantiles(0.02))


def _filled_distinct(lg_k: int) -> Distinct:
    d = Distinct(lg_k)
    d.add("x")
    return d


@pytest.mark.parametrize(
    ("make", "problem"),
    [
        (lambda: DistinctSpec(lg_k=2), "lg_k must be between 4 and 21"),
        (lambda: QuantileSpec(relative_accuracy=0.0), "relative_accuracy must be in"),
        (lambda: QuantileSpec(bin_limit=1), "bin_limit must be at least"),
    ],
)
def test_bad_parameters_are_named(make, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        make()


@given(values_with_junk)
def test_extend_equals_adding_one_by_one(xs: list[float | None]) -> None:
    one, many = Moments(), Moments()
    for x in xs:
        one.add(x)
    many.extend(xs)
    assert (many.count, many.min, many.max) == (one.count, one.min, one.max)
    assert _sum_ok(many.sum, _clean(xs))
    q1, q2 = Quantiles(), Quantiles()
    for x in xs:
        q1.add(x)
    q2.extend(xs)
    assert [q2.quantile(p) for p in (0.5, 0.99)] == [q1.quantile(p) for p in (0.5, 0.99)]


@given(st.lists(st.one_of(st.none(), st.sampled_from(["", "a", "b", "c", "d"])), max_size=50))
def test_distinct_extend_equals_add(ids: list[str | None]) -> None:
    one, many = Distinct(), Distinct()
    for u in ids:
        one.add(u)
    many.extend(ids)
    assert many == one
