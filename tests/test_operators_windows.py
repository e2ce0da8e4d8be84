"""Window specs, pane assignment and the watermark."""

from __future__ import annotations

import math
import pickle

import pytest
from hypothesis import given
from hypothesis import strategies as st

from linkpulse.operators.watermark import Watermark
from linkpulse.operators.windows import (
    DEFAULT_WINDOWS,
    WindowSpec,
    pane_of,
    pane_size,
    parse_duration,
)

times = st.floats(min_value=-1e9, max_value=4e9, allow_nan=False, allow_infinity=False)


@pytest.mark.parametrize(
    ("name", "size", "step"),
    [("1m", 60, 60), ("5m", 300, 300), ("15m", 900, 900), ("1h", 3600, 3600),
     ("5m/10s", 300, 10), ("15m/10s", 900, 10)],
)  # fmt: skip
def test_parse_and_name_round_trip(name: str, size: int, step: int) -> None:
    w = WindowSpec.parse(name)
    assert (w.size_s, w.step_s, w.name) == (size, step, name)
    assert w.is_sliding == (size != step)


@pytest.mark.parametrize(
    ("text", "problem"),
    [("", "positive duration"), ("0m", "positive duration"), ("5 m", "positive duration"),
     ("1m/7s", "multiple of its step"), ("10s/1m", "multiple of its step")],
)  # fmt: skip
def test_bad_window_names_say_why(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        WindowSpec.parse(text)


def test_pane_is_gcd_of_every_size_and_step() -> None:
    assert pane_size(DEFAULT_WINDOWS) == 10
    assert pane_size([WindowSpec.parse("1m"), WindowSpec.parse("1h")]) == 60
    assert parse_duration("1d") == 86400


def test_tumbling_boundaries_are_epoch_aligned_and_half_open() -> None:
    m = WindowSpec.parse("1m")
    assert m.start_of(0.0) == 0
    assert m.start_of(59.999) == 0
    assert m.start_of(60.0) == 60  # [start, end): the end belongs to the next window
    assert m.start_of(-0.001) == -60
    assert list(m.starts_containing(60.0)) == [60]


@given(times, st.sampled_from(DEFAULT_WINDOWS))
def test_starts_containing_equals_brute_force(t: float, w: WindowSpec) -> None:
    first = math.floor(t / w.step_s) * w.step_s - w.size_s - w.step_s
    brute = [
        s for s in range(int(first), int(first) + 3 * w.size_s, w.step_s) if s <= t < s + w.size_s
    ]
    assert list(w.starts_containing(t)) == brute
    assert len(brute) == w.size_s // w.step_s


@given(times)
def test_pane_contains_time(t: float) -> None:
    p = pane_of(t, 10)
    assert p <= t < p + 10 and p % 10 == 0


def test_watermark_is_max_minus_lateness_and_monotone() -> None:
    wm = Watermark(allowed_lateness_s=10, idle_timeout_s=None)
    assert wm.current(0.0) == -math.inf
    assert wm.observe(100.0, now=0.0) == 90.0
    assert wm.observe(50.0, now=1.0) == 90.0  # older events never pull it back
    assert wm.observe(130.0, now=2.0) == 120.0
    assert wm.current(10_000.0) == 120.0  # no idle advance configured
    assert wm.when_reaches(200.0, now=3.0) is None


def test_idle_advance_moves_with_the_clock_after_timeout() -> None:
    wm = Watermark(allowed_lateness_s=10, idle_timeout_s=5)
    wm.observe(1000.0, now=5000.0)
    assert wm.current(5004.0) == 990.0
    assert wm.current(5015.0) == 1000.0
    assert wm.when_reaches(1060.0, now=5006.0) == pytest.approx(5075.0)
    # an event after an idle advance does not undo it
    wm.observe(1001.0, now=5030.0)
    assert wm.current(5030.0) == 1015.0


def test_watermark_snapshot_round_trip() -> None:
    wm = Watermark(10, 5)
    wm.observe(1000.0, now=5000.0)
    again = Watermark(10, 5, pickle.loads(pickle.dumps(wm.snapshot())))
    assert again.current(5020.0) == wm.current(5020.0) == 1005.0


@pytest.mark.parametrize(
    ("kwargs", "problem"),
    [
        ({"allowed_lateness_s": -1}, "allowed_lateness_s"),
        ({"idle_timeout_s": -1}, "idle_timeout_s"),
    ],
)
def test_watermark_bad_arguments(kwargs: dict[str, float], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        Watermark(**kwargs)
