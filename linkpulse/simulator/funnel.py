"""Funnel and behaviour constants, and the expected events each root action makes.

The generator starts "root actions" (a browsing session, a signup, a new
listing, a wallet link) as a Poisson process; each one schedules its events
over the following seconds to days. To make ``--rate`` the mean number of
*events* per second, the root rate is ``rate / expected_events_per_root()``.

>>> round(expected_events_per_root(0.025, 0.03), 3)
3.109
>>> round(expected_page_views_per_session(), 3)
3.068
"""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import Final

# Root actions and their shares.
P_SESSION: Final = 0.955
P_SIGNUP: Final = 0.015
P_LISTING: Final = 0.02
P_WALLET: Final = 0.01  # a user linking a wallet from their account page
# after a signup, some users link a wallet within minutes
P_SIGNUP_WALLET: Final = 0.3

# Session funnel: landing page, then products, cart, checkout, order.
P_HOME: Final = 0.4  # landing page: home, search or (the rest) category
P_SEARCH: Final = 0.35
P_PRODUCT: Final = 0.8  # a session views at least one product
P_MORE_PRODUCTS: Final = 0.55  # each further product view (geometric)
P_CART: Final = 0.2
P_CHECKOUT: Final = 0.5
P_ORDER: Final = 0.8
P_ACCOUNT: Final = 0.05  # an account page at the end of a session
PAGE_GAP_MEDIAN_S: Final = 15.0
PAGE_GAP_SIGMA: Final = 0.8

# After the order.
PAYMENT_DELAY_S: Final = (0.5, 8.0)  # uniform
REFUND_DELAY_MEDIAN_S: Final = 2 * 3600.0
REFUND_DELAY_SIGMA: Final = 1.0
REFUND_DELAY_BOUNDS_S: Final = (300.0, 3 * 86400.0)
P_REVIEW: Final = 0.1  # of settled orders
REVIEW_DELAY_MEDIAN_S: Final = 3 * 3600.0
PRICE_SIGMA: Final = 0.6  # log-normal spread of one order around the seller's median
ITEMS: Final = ((1, 0.7), (2, 0.9), (3, 1.0))  # cumulative

FAILURE_REASONS: Final = ("card_declined", "insufficient_funds", "processor_error", "fraud_check")
REFUND_REASONS: Final = ("not_as_described", "not_received", "changed_mind", "damaged")
PAYMENT_METHODS: Final = ("card", "card", "card", "wallet", "bank_transfer")
WALLET_PROVIDERS: Final = ("apple_pay", "google_pay", "paypal", "metamask")
SIGNUP_CHANNELS: Final = ("organic", "organic", "referral", "ads")
CATEGORIES: Final = ("fashion", "electronics", "home", "art", "collectibles", "books")
RATINGS: Final = (1, 2, 3, 4, 4, 5, 5, 5, 5, 5)


def lognormal_table(median: float, sigma: float, size: int = 4096) -> tuple[float, ...]:
    """Log-normal quantiles at ``size`` evenly spaced probabilities, for O(1) draws.

    ``table[int(rng.random() * len(table))]`` is a log-normal draw, quantised to
    ``size`` levels and cut at ~3.5 sigma, about 6x cheaper than
    ``random.lognormvariate`` (the generator's largest cost before).

    >>> t = lognormal_table(15.0, 0.8)
    >>> round(t[len(t) // 2], 2), t[0] < 1.0 < 200.0 < t[-1]
    (15.0, True)
    """
    normal = NormalDist()
    return tuple(median * math.exp(sigma * normal.inv_cdf((i + 0.5) / size)) for i in range(size))


PAGE_GAPS: Final = lognormal_table(PAGE_GAP_MEDIAN_S, PAGE_GAP_SIGMA)
PRICE_FACTORS: Final = lognormal_table(1.0, PRICE_SIGMA)


def expected_page_views_per_session() -> float:
    """Mean page views in one browsing session."""
    products = 1.0 / (1.0 - P_MORE_PRODUCTS)
    cart_pages = P_PRODUCT * P_CART * (1.0 + P_CHECKOUT)
    return 1.0 + P_PRODUCT * products + cart_pages + P_ACCOUNT


def orders_per_session() -> float:
    """Mean orders placed per browsing session (the conversion rate)."""
    return P_PRODUCT * P_CART * P_CHECKOUT * P_ORDER


def expected_events_per_root(failure_rate: float, refund_rate: float) -> float:
    """Mean events one root action produces (used to turn --rate into a root rate)."""
    after_order = 2.0 + (1.0 - failure_rate) * (refund_rate + P_REVIEW)
    session = expected_page_views_per_session() + orders_per_session() * after_order
    signup = 1.0 + P_SIGNUP_WALLET
    return P_SESSION * session + P_SIGNUP * signup + P_LISTING + P_WALLET
