"""Tail probabilities the detectors need, in plain ``math`` (scipy costs ~50 us a call).

>>> round(normal_sf(1.6448536), 4), round(poisson_sf(5, 1.0), 5), round(poisson_cdf(0, 3.0), 5)
(0.05, 0.00366, 0.04979)
>>> round(chi2_sf_even(12.592, 6), 3)
0.05
>>> round(surprise(0.001), 6)
3.0
>>> round(binom_sf(3, 10, 0.1), 4), round(binom_cdf(0, 10, 0.1), 4)
(0.0702, 0.3487)
"""

from __future__ import annotations

import math
from typing import Final

SQRT2: Final = math.sqrt(2.0)
_SQRT3: Final = math.sqrt(3.0)
TINY: Final = 1e-300  # smallest p we report: surprise 300 digits
LN10: Final = math.log(10.0)
# Above this mean the Poisson tails use the normal approximation (Wilson-Hilferty-like error
# is far below what a detector's threshold can tell apart, and the loops stay short).
_POISSON_NORMAL_ABOVE: Final = 30.0
# Within this many sigmas of the mean the tail is large (> 1%) and only feeds the
# calibrators' long-run mean: the normal approximation is plenty, and 20x cheaper.
_NEAR_SIGMAS: Final = 2.5
_MAX_TERMS: Final = 400


def normal_sf(z: float) -> float:
    """P(Z > z) for a standard normal Z."""
    return 0.5 * math.erfc(z / SQRT2)


def t3_sf(t: float) -> float:
    """P(T > t) for a Student t with 3 degrees of freedom (closed form; heavy tails).

    >>> round(t3_sf(3.182446), 4), t3_sf(1e6) < 1e-12
    (0.025, True)
    """
    if t < 0.0:
        return 1.0 - t3_sf(-t)
    if t > 1e4:  # the tail's leading term, where the closed form cancels to noise
        return 2.0 * _SQRT3 / (math.pi * t**3)
    u = t / _SQRT3
    tail = 0.5 - (u / (1.0 + u * u) + math.atan(u)) / math.pi
    return tail if tail > 0.0 else 0.0  # max(0.0, tail)


def surprise(p: float) -> float:
    """``-log10(p)`` with p clamped to [1e-300, 1]: the raw score of a tail probability."""
    if not p > TINY:  # also NaN
        p = TINY
    return 0.0 if p >= 1.0 else -math.log10(p)


def _pmf(k: int, lam: float) -> float:
    return math.exp(k * math.log(lam) - lam - math.lgamma(k + 1.0))


# poisson_sf / poisson_cdf run three times per step of every count series: normal_sf and
# _pmf are written out in them (the same operations, so the same floats)


def poisson_sf(k: int, lam: float) -> float:
    """P(X >= k) for X ~ Poisson(lam); the upper tail summed directly (no 1 - cdf)."""
    if k <= 0:
        return 1.0
    if lam <= 0.0:
        return 0.0
    if lam > _POISSON_NORMAL_ABOVE or (lam > 3.0 and abs(k - lam) < _NEAR_SIGMAS * math.sqrt(lam)):
        # continuity correction; sqrt transform keeps the skew roughly right
        z = 2.0 * (math.sqrt(k - 0.5 + 0.375) - math.sqrt(lam + 0.375))
        return 0.5 * math.erfc(z / SQRT2)
    if k <= lam:
        return max(0.0, 1.0 - poisson_cdf(k - 1, lam))
    term = math.exp(k * math.log(lam) - lam - math.lgamma(k + 1.0))
    total = term
    i = k
    while term > total * 1e-12 and i < k + _MAX_TERMS:
        i += 1
        term *= lam / i
        total += term
    return 1.0 if total > 1.0 else total  # min(total, 1.0), NaN included


def poisson_cdf(k: int, lam: float) -> float:
    """P(X <= k) for X ~ Poisson(lam); the lower tail summed downwards from k."""
    if k < 0:
        return 0.0
    if lam <= 0.0:
        return 1.0
    if lam > _POISSON_NORMAL_ABOVE or (lam > 3.0 and abs(k - lam) < _NEAR_SIGMAS * math.sqrt(lam)):
        z = 2.0 * (math.sqrt(lam + 0.375) - math.sqrt(k + 0.5 + 0.375))
        return 0.5 * math.erfc(z / SQRT2)
    if k >= lam:
        return max(0.0, 1.0 - poisson_sf(k + 1, lam))
    term = math.exp(k * math.log(lam) - lam - math.lgamma(k + 1.0))
    total = term
    i = k
    while i > 0 and term > total * 1e-12:
        term *= i / lam
        i -= 1
        total += term
    return 1.0 if total > 1.0 else total  # min(total, 1.0), NaN included


def poisson_two_sided(x: float, lam: float, phi: float) -> tuple[float, str]:
    """Quasi-Poisson two-sided tail probability of count ``x`` at mean ``lam`` and its direction.

    ``x / phi`` taken as Poisson with mean ``lam / phi`` (over-dispersion ``phi >= 1``);
    below a mean of 1e-9 any count is a surprise (1e-12) and no count is nothing.

    >>> poisson_two_sided(9.0, 2.0, 1.0)[1], poisson_two_sided(0.0, 0.0, 1.0)
    ('up', (1.0, 'none'))
    """
    if lam <= 1e-9:
        return (1.0, "none") if x <= 0.0 else (1e-12, "up")
    k = x / phi
    m = lam / phi
    if k >= m:
        t = 2.0 * poisson_sf(math.ceil(k - 1e-9), m)
        return (t if t < 1.0 else 1.0), "up"
    t = 2.0 * poisson_cdf(math.floor(k + 1e-9), m)
    return (t if t < 1.0 else 1.0), "down"


def chi2_sf_even(x: float, dof: int) -> float:
    """P(X > x) for X ~ chi-square with an even number of degrees of freedom (closed form)."""
    if x <= 0.0:
        return 1.0
    half = x / 2.0
    term = 1.0
    total = 1.0
    for i in range(1, dof // 2):
        term *= half / i
        total += term
    return min(1.0, math.exp(-half) * total)


_BINOM_NORMAL_ABOVE: Final = 400


def _binom_pmf(k: int, n: int, p: float) -> float:
    if p <= 0.0:
        return 1.0 if k == 0 else 0.0
    if p >= 1.0:
        return 1.0 if k == n else 0.0
    log = (
        math.lgamma(n + 1.0) - math.lgamma(k + 1.0) - math.lgamma(n - k + 1.0)
        + k * math.log(p) + (n - k) * math.log1p(-p)
    )  # fmt: skip
    return math.exp(log)


def binom_sf(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p), summed from k up (normal approximation for big n)."""
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    var = n * p * (1.0 - p)
    if n > _BINOM_NORMAL_ABOVE or (var > 3.0 and abs(k - n * p) < _NEAR_SIGMAS * math.sqrt(var)):
        sd = math.sqrt(var)
        return normal_sf((k - 0.5 - n * p) / sd) if sd > 0 else float(k <= n * p)
    if k <= n * p:  # the upper tail is big: sum the short lower side instead
        return max(0.0, 1.0 - binom_cdf(k - 1, n, p))
    # one pmf, then the ratio recurrence upwards (no lgamma per term), until the terms vanish
    term = _binom_pmf(k, n, p)
    total = term
    odds = p / (1.0 - p)
    i = k
    while i < n and term > total * 1e-12:
        term *= (n - i) / (i + 1.0) * odds
        i += 1
        total += term
    return min(1.0, total)


def binom_cdf(k: int, n: int, p: float) -> float:
    """P(X <= k) for X ~ Binomial(n, p)."""
    if k < 0:
        return 0.0
    if k >= n:
        return 1.0
    var = n * p * (1.0 - p)
    if n > _BINOM_NORMAL_ABOVE or (var > 3.0 and abs(k - n * p) < _NEAR_SIGMAS * math.sqrt(var)):
        sd = math.sqrt(var)
        return normal_sf((n * p - k - 0.5) / sd) if sd > 0 else float(k >= n * p)
    if k >= n * p:
        return max(0.0, 1.0 - binom_sf(k + 1, n, p))
    term = _binom_pmf(k, n, p)
    total = term
    odds = (1.0 - p) / p if p > 0.0 else 0.0
    i = k
    while i > 0 and term > total * 1e-12:
        term *= i / (n - i + 1.0) * odds
        i -= 1
        total += term
    return min(1.0, total)


# lgamma(m + 1) = ln m! for the exact binomial sums (their n stays <= _BINOM_NORMAL_ABOVE):
# the same floats math.lgamma gives, looked up
_LN_FACT: Final = tuple(math.lgamma(m + 1.0) for m in range(_BINOM_NORMAL_ABOVE + 1))


def binom_two_sided(k: int, n: int, p: float, log_p: float, log_q: float) -> tuple[float, str]:
    """The two-sided binomial tail of ``k`` in ``n`` at ``p`` and its direction, fast.

    ``min(1, 2 * binom_sf(k, n, p)), "up"`` when ``k >= n p``, else ``min(1, 2 *
    binom_cdf(k, n, p)), "down"``, to the last bit (the same operations in the same
    order), for ``0 <= k <= n``, ``n >= 1`` and ``0 < p < 1``; ``log_p = log(p)`` and
    ``log_q = log1p(-p)`` are taken once per step by a caller that tests several
    windows at the same rate.

    >>> p = 0.03
    >>> binom_two_sided(3, 20, p, math.log(p), math.log1p(-p)) == (2 * binom_sf(3, 20, p), "up")
    True
    >>> binom_two_sided(0, 90, p, math.log(p), math.log1p(-p))[1]
    'down'
    """
    np_ = n * p
    var = np_ * (1.0 - p)
    up = k >= np_
    if n > _BINOM_NORMAL_ABOVE or (var > 3.0 and abs(k - np_) < _NEAR_SIGMAS * math.sqrt(var)):
        sd = math.sqrt(var)
        if up:
            tail = 0.5 * math.erfc((k - 0.5 - np_) / sd / SQRT2) if sd > 0 else float(k <= np_)
        else:
            tail = 0.5 * math.erfc((np_ - k - 0.5) / sd / SQRT2) if sd > 0 else float(k >= np_)
    elif up and (k == np_ or k <= 0 or k >= n):
        # the edges, where binom_sf takes a detour or a shortcut: ask it
        tail = binom_sf(k, n, p)
    else:
        lf = _LN_FACT
        term = math.exp(lf[n] - lf[k] - lf[n - k] + k * log_p + (n - k) * log_q)
        total = term
        i = k
        if up:
            odds = p / (1.0 - p)
            while i < n and term > total * 1e-12:
                term *= (n - i) / (i + 1.0) * odds
                i += 1
                total += term
        else:
            odds = (1.0 - p) / p
            while i > 0 and term > total * 1e-12:
                term *= i / (n - i + 1.0) * odds
                i -= 1
                total += term
        tail = total if total < 1.0 else 1.0
    tail *= 2.0
    return (tail if tail < 1.0 else 1.0), ("up" if up else "down")
