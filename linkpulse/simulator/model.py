"""The simulated marketplace: tenants, long-tailed sellers, users, seasonality.

Everything here is built from a seed and never changes while traffic runs, so
the generator can read it without copying. Seller sizes follow a Zipf law (a
few sellers take most orders, as on real marketplaces); prices are log-normal
around each seller's own median.

>>> m = build_marketplace(MarketConfig(tenants=2, sellers=50, seed=7))
>>> [t.slug for t in m.tenants], m.tenants[0].currency
(['acme', 'globex'], 'USD')
>>> len(m.tenants[0].sellers), m.tenants[0].sellers[0].seller_id
(50, 'acme-s0000')
>>> round(sum(daily_multiplier(h + 0.5) for h in range(24)) / 24, 2)
1.0
"""

from __future__ import annotations

import bisect
import math
import random
from dataclasses import dataclass, field
from typing import Final

# Tenant slugs in order; beyond the list, tenants are named "tenant-N".
TENANT_NAMES: Final = (
    "acme",
    "globex",
    "initech",
    "umbrella",
    "hooli",
    "stark",
    "wayne",
    "wonka",
    "tyrell",
    "soylent",
)
# (currency, how many major units buy what 1 USD buys, decimals of the currency)
CURRENCIES: Final = (
    ("USD", 1.0, 2),
    ("EUR", 0.92, 2),
    ("GBP", 0.79, 2),
    ("JPY", 150.0, 0),
    ("BRL", 5.0, 2),
    ("INR", 83.0, 2),
)

# Relative traffic by UTC hour of day (night trough, evening peak), normalised below.
_HOURLY: Final = (
    0.55, 0.40, 0.30, 0.25, 0.25, 0.30, 0.45, 0.65, 0.85, 1.00, 1.10, 1.15,
    1.20, 1.15, 1.10, 1.10, 1.15, 1.25, 1.40, 1.55, 1.60, 1.50, 1.20, 0.85,
)  # fmt: skip
# Relative traffic by ISO weekday (Monday first): weekends shop a little more.
_WEEKLY: Final = (0.95, 0.95, 0.97, 1.00, 1.05, 1.06, 1.02)
_HOURLY_MEAN: Final = sum(_HOURLY) / len(_HOURLY)
_WEEKLY_MEAN: Final = sum(_WEEKLY) / len(_WEEKLY)


def daily_multiplier(hour: float) -> float:
    """Rate multiplier at a fractional UTC hour (0-24), mean 1 over a day.

    Values are given at each hour's middle and interpolated linearly, so the
    rate has no steps a detector could mistake for an anomaly.

    >>> daily_multiplier(20.5) > 1.4 > 0.3 > daily_multiplier(3.5)
    True
    """
    x = (hour - 0.5) % 24.0
    i = int(x)
    frac = x - i
    value = _HOURLY[i] * (1.0 - frac) + _HOURLY[(i + 1) % 24] * frac
    return value / _HOURLY_MEAN


def weekly_multiplier(weekday: int) -> float:
    """Rate multiplier for an ISO weekday index (0 = Monday), mean 1 over a week.

    >>> weekly_multiplier(5) > weekly_multiplier(0)
    True
    """
    return _WEEKLY[weekday] / _WEEKLY_MEAN


def seasonal_multiplier(ts: float) -> float:
    """Combined daily x weekly multiplier at a Unix timestamp (mean 1 over a week).

    >>> round(seasonal_multiplier(0.0), 3)  # 1970-01-01 00:00 UTC, a Thursday
    0.753
    """
    day, sec = divmod(ts, 86400.0)
    weekday = (int(day) + 3) % 7  # the epoch was a Thursday
    return daily_multiplier(sec / 3600.0) * weekly_multiplier(weekday)


@dataclass(frozen=True)
class MarketConfig:
    """How big the marketplace is; validated so a bad CLI option fails early.

    >>> MarketConfig(tenants=0)
    Traceback (most recent call last):
    ...
    ValueError: --tenants must be between 1 and 1000, got 0
    """

    tenants: int = 3
    sellers: int = 200  # per tenant
    users: int = 0  # per tenant at start; 0 means 25 per seller
    seed: int = 42
    zipf_exponent: float = 1.1

    def __post_init__(self) -> None:
        if not 1 <= self.tenants <= 1000:
            msg = f"--tenants must be between 1 and 1000, got {self.tenants}"
            raise ValueError(msg)
        if not 1 <= self.sellers <= 1_000_000:
            msg = f"--sellers must be between 1 and 1000000, got {self.sellers}"
            raise ValueError(msg)
        if self.users < 0:
            msg = f"--users must be >= 0 (0 = 25 per seller), got {self.users}"
            raise ValueError(msg)
        if not 0.0 < self.zipf_exponent <= 3.0:
            msg = f"zipf_exponent must be in (0, 3], got {self.zipf_exponent}"
            raise ValueError(msg)


@dataclass(frozen=True)
class Seller:
    """One seller: its share of its tenant's orders and its median price in USD."""

    seller_id: str
    weight: float
    median_price_usd: float


@dataclass
class Tenant:
    """One marketplace tenant: its currency and population."""

    slug: str
    currency: str
    fx: float  # currency units per USD
    decimals: int
    weight: float  # share of all traffic
    sellers: list[Seller]
    users: int  # user ids 0..users-1 exist; signups append
    seller_cum: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        acc = 0.0
        self.seller_cum = []
        for s in self.sellers:
            acc += s.weight
            self.seller_cum.append(acc)

    def pick_seller(self, u: float) -> Seller:
        """The seller at quantile ``u`` in [0, 1) of order share (weighted pick)."""
        i = bisect.bisect_right(self.seller_cum, u * self.seller_cum[-1])
        return self.sellers[min(i, len(self.sellers) - 1)]

    def seller(self, seller_id: str) -> Seller | None:
        """The seller with this id, or None."""
        for s in self.sellers:
            if s.seller_id == seller_id:
                return s
        return None


@dataclass
class Marketplace:
    """All tenants, with cumulative traffic weights for fast weighted picks."""

    tenants: list[Tenant]
    tenant_cum: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        acc = 0.0
        self.tenant_cum = []
        for t in self.tenants:
            acc += t.weight
            self.tenant_cum.append(acc)

    def tenant(self, slug: str) -> Tenant | None:
        """The tenant with this slug, or None."""
        for t in self.tenants:
            if t.slug == slug:
                return t
        return None


def tenant_slug(i: int) -> str:
    """The i-th tenant's slug.

    >>> tenant_slug(0), tenant_slug(12)
    ('acme', 'tenant-12')
    """
    return TENANT_NAMES[i] if i < len(TENANT_NAMES) else f"tenant-{i}"


def build_marketplace(cfg: MarketConfig) -> Marketplace:
    """Build the marketplace deterministically from ``cfg.seed``."""
    # A string seed is hashed with SHA-512 by `random`, so it is stable across runs
    # and independent of the traffic stream's own Random(seed).
    rng = random.Random(f"linkpulse-model:{cfg.seed}")
    tenants = []
    for i in range(cfg.tenants):
        slug = tenant_slug(i)
        currency, fx, decimals = CURRENCIES[i % len(CURRENCIES)]
        # Bigger tenants first, mildly long-tailed so small tenants still get traffic.
        weight = 1.0 / (i + 1) ** 0.7
        # Each tenant has its own price level (a luxury vs a bargain marketplace).
        tenant_median = math.exp(rng.gauss(math.log(35.0), 0.35))
        sellers = [
            Seller(
                seller_id=f"{slug}-s{j:04d}",
                weight=1.0 / (j + 1) ** cfg.zipf_exponent,
                median_price_usd=math.exp(rng.gauss(math.log(tenant_median), 0.7)),
            )
            for j in range(cfg.sellers)
        ]
        users = cfg.users or cfg.sellers * 25
        tenants.append(Tenant(slug, currency, fx, decimals, weight, sellers, users))
    return Marketplace(tenants)
