"""Root actions and the events each one schedules (a user's session, a signup, ...).

Kept apart from the arrival loop so the behaviour (funnel, prices, delays) can
be read in one place. Anomalies that act on single events (failure spikes,
revenue drops, refund bursts) are applied here at the event's own time.
"""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from linkpulse.schemas.events import (
    BaseEvent,
    ListingCreated,
    OrderPlaced,
    PageView,
    PaymentFailed,
    PaymentSettled,
    RefundIssued,
    ReviewPosted,
    UserSignup,
    WalletConnected,
)
from linkpulse.simulator import funnel as F
from linkpulse.simulator.anomalies import Anomaly
from linkpulse.simulator.model import Marketplace, Tenant, daily_multiplier
from linkpulse.simulator.schedule import Schedule

if TYPE_CHECKING:
    from linkpulse.simulator.generator import TrafficConfig

_BURST_BACKLOG = 5000  # settled orders remembered per refund-burst seller

_fromts = datetime.fromtimestamp


@dataclass(slots=True)
class _Settled:
    """A settled order remembered for a refund burst."""

    settle_t: float
    order_id: str
    user: str
    amount: float
    refunded: bool = False


class SessionWriter:
    """Builds the events of root actions and puts them on the schedule."""

    def __init__(
        self,
        cfg: TrafficConfig,
        market: Marketplace,
        anomalies: Sequence[Anomaly],
        schedule: Schedule[BaseEvent],
    ) -> None:
        self.rng = random.Random(cfg.seed)
        self._emit = schedule.push
        self._market = market
        self._tenants = market.tenants
        self._users = [t.users for t in market.tenants]
        self._orders = 0
        self._listings = 0
        self._failure_rate = cfg.failure_rate
        self._refund_rate = cfg.refund_rate
        slugs = {t.slug: i for i, t in enumerate(market.tenants)}
        n = len(market.tenants)
        self._spikes: list[list[tuple[float, float, float]]] = [[] for _ in range(n)]
        self._drops: list[list[tuple[float, float, float]]] = [[] for _ in range(n)]
        self._bursts: dict[str, list[Anomaly]] = {}
        # tenant -> anomalies that scale its whole traffic (gradual drift, pattern change)
        self._rates: list[list[Anomaly]] = [[] for _ in range(n)]
        # seller id -> (start, end, share of its orders lost)
        self._shifts: dict[str, list[tuple[float, float, float]]] = {}
        for a in anomalies:
            ti = slugs[a.tenant]
            if a.kind == "failure_spike":
                self._spikes[ti].append((a.start, a.end, a.magnitude))
            elif a.kind == "revenue_drop":
                self._drops[ti].append((a.start, a.end, 1.0 - a.magnitude))
            elif a.kind == "refund_burst" and a.seller_id is not None:
                self._bursts.setdefault(a.seller_id, []).append(a)
            elif a.kind in ("gradual_drift", "pattern_change"):
                self._rates[ti].append(a)
            elif a.kind == "seller_shift" and a.seller_id is not None:
                self._shifts.setdefault(a.seller_id, []).append((a.start, a.end, a.magnitude))
        # seller id -> its recent settled orders (only for refund-burst sellers)
        self._backlog: dict[str, deque[_Settled]] = {
            s: deque(maxlen=_BURST_BACKLOG) for s in self._bursts
        }

    # -- helpers -------------------------------------------------------------------------

    def _id(self) -> str:
        # 32 hex digits; to_bytes().hex() is ~4x faster than an f-string format
        return self.rng.getrandbits(128).to_bytes(16, "big").hex()

    def _user(self, ti: int) -> str:
        return f"{self._tenants[ti].slug}-u{int(self.rng.random() * self._users[ti]):07d}"

    def _tenant_index(self, u: float) -> int:
        cum = self._market.tenant_cum
        x = u * cum[-1]
        for i, c in enumerate(cum):
            if x < c:
                return i
        return len(cum) - 1

    # -- root actions --------------------------------------------------------------------

    def root(self, t: float, u: float) -> None:
        """Start the root action that quantile ``u`` in [0, 1) picks, at time t."""
        ti = self._tenant_index(self.rng.random())
        if self._rates[ti]:
            factor = self._rate_factor(ti, t)
            if factor != 1.0:
                # Thin (factor < 1) or repeat (factor > 1) the tenant's root actions: the
                # arrivals stay a Poisson-like process at factor x the usual rate.
                copies = int(factor) + (1 if self.rng.random() < factor - int(factor) else 0)
                for k in range(copies):
                    self._root_action(t + k * 1e-3, u, ti)
                return
        self._root_action(t, u, ti)

    def _rate_factor(self, ti: int, t: float) -> float:
        """How the active drift / pattern-change anomalies scale tenant ``ti``'s traffic at t."""
        factor = 1.0
        for a in self._rates[ti]:
            if not a.start <= t < a.end:
                continue
            if a.kind == "gradual_drift":
                factor *= 1.0 - a.magnitude * (t - a.start) / (a.end - a.start)
            else:  # pattern_change: the daily curve moved by `magnitude` hours
                hour = t % 86400.0 / 3600.0
                factor *= daily_multiplier((hour - a.magnitude) % 24.0) / daily_multiplier(hour)
        return factor

    def _root_action(self, t: float, u: float, ti: int) -> None:
        if u < F.P_SESSION:
            self.session(t, ti, buy=True)
        elif u < F.P_SESSION + F.P_SIGNUP:
            self._signup(t, ti)
        elif u < F.P_SESSION + F.P_SIGNUP + F.P_LISTING:
            self._listing(t, ti)
        else:
            self._wallet(t, ti, self._user(ti))

    def session(self, t: float, ti: int, *, buy: bool) -> None:
        """A browsing session; with ``buy`` False it never orders (surge traffic)."""
        rng = self.rng
        random = rng.random
        gaps, n_gaps = F.PAGE_GAPS, len(F.PAGE_GAPS)
        tenant = self._tenants[ti]
        slug = tenant.slug
        user = self._user(ti)
        u = random()
        landing = "home" if u < F.P_HOME else "search" if u < F.P_HOME + F.P_SEARCH else "category"
        self._emit(t, self._page(t, slug, user, landing, None))
        if random() < F.P_PRODUCT:
            seller = tenant.pick_seller(random())
            sid = seller.seller_id
            while True:
                t += gaps[int(random() * n_gaps)]
                self._emit(t, self._page(t, slug, user, "product", sid))
                if random() >= F.P_MORE_PRODUCTS:
                    break
            if random() < F.P_CART:
                t += gaps[int(random() * n_gaps)]
                self._emit(t, self._page(t, slug, user, "cart", sid))
                if random() < F.P_CHECKOUT:
                    t += gaps[int(random() * n_gaps)]
                    self._emit(t, self._page(t, slug, user, "checkout", sid))
                    if buy and random() < F.P_ORDER:
                        t += gaps[int(random() * n_gaps)]
                        self._order(t, ti, tenant, user, sid, seller.median_price_usd)
        if random() < F.P_ACCOUNT:
            t += gaps[int(random() * n_gaps)]
            self._emit(t, self._page(t, slug, user, "account", None))

    def _page(self, t: float, slug: str, user: str, page: str, sid: str | None) -> PageView:
        return PageView(
            event_id=self._id(),
            event_time=_fromts(t, UTC),
            tenant=slug,
            user_id=user,
            seller_id=sid,
            properties={"page": page},
        )

    def _order(self, t: float, ti: int, tenant: Tenant, user: str, sid: str, median: float) -> None:
        rng = self.rng
        shifts = self._shifts.get(sid) if self._shifts else None
        if shifts is not None:
            for s, e, lost in shifts:
                if s <= t < e and rng.random() < lost:
                    return  # seller_shift: the buyer left without ordering
        self._orders += 1
        order_id = f"{tenant.slug}-o{self._orders:09d}"
        u = rng.random()
        items = next(n for n, c in F.ITEMS if u < c)
        usd = median * F.PRICE_FACTORS[int(rng.random() * len(F.PRICE_FACTORS))] * items
        t_pay = t + rng.uniform(*F.PAYMENT_DELAY_S)
        for s, e, keep in self._drops[ti]:
            if s <= t_pay < e:
                usd *= keep
        amount = round(max(usd, 0.5) * tenant.fx, tenant.decimals)
        cur, slug = tenant.currency, tenant.slug
        props = {"order_id": order_id, "items": items}
        self._emit_money(OrderPlaced, t, slug, user, sid, amount, cur, props)
        fail = self._failure_rate
        for s, e, rate in self._spikes[ti]:
            if s <= t_pay < e:
                fail = rate
        failed = rng.random() < fail
        if failed:
            kind: type[PaymentFailed | PaymentSettled] = PaymentFailed
            detail = ("reason", F.FAILURE_REASONS[int(rng.random() * len(F.FAILURE_REASONS))])
        else:
            kind = PaymentSettled
            detail = ("method", F.PAYMENT_METHODS[int(rng.random() * len(F.PAYMENT_METHODS))])
        props = {"order_id": order_id, detail[0]: detail[1]}
        self._emit_money(kind, t_pay, slug, user, sid, amount, cur, props)
        if failed:
            return
        record: _Settled | None = None
        if sid in self._backlog:
            record = _Settled(t_pay, order_id, user, amount)
            self._backlog[sid].append(record)
            for a in self._bursts[sid]:
                if a.start <= t_pay < a.end and rng.random() < a.magnitude:
                    record.refunded = True
                    self._refund(rng.uniform(t_pay, a.end), slug, user, sid, amount, cur, order_id)
        if (record is None or not record.refunded) and rng.random() < self._refund_rate:
            lo, hi = F.REFUND_DELAY_BOUNDS_S
            delay = rng.lognormvariate(math.log(F.REFUND_DELAY_MEDIAN_S), F.REFUND_DELAY_SIGMA)
            if record is not None:
                record.refunded = True
            self._refund(t_pay + min(max(delay, lo), hi), slug, user, sid, amount, cur, order_id)
        if rng.random() < F.P_REVIEW:
            t_rev = t_pay + rng.lognormvariate(math.log(F.REVIEW_DELAY_MEDIAN_S), 1.0)
            rating = F.RATINGS[int(rng.random() * len(F.RATINGS))]
            ev = ReviewPosted(
                event_id=self._id(),
                event_time=_fromts(t_rev, UTC),
                tenant=slug,
                user_id=user,
                seller_id=sid,
                properties={"rating": rating, "order_id": order_id},
            )
            self._emit(t_rev, ev)

    def _emit_money(
        self,
        kind: type[OrderPlaced | PaymentSettled | PaymentFailed | RefundIssued],
        t: float,
        slug: str,
        user: str,
        sid: str,
        amount: float,
        cur: str,
        props: dict[str, Any],
    ) -> None:
        """Emit an event that moves money (order, payment, refund) at time ``t``."""
        ev = kind(
            event_id=self._id(),
            event_time=_fromts(t, UTC),
            tenant=slug,
            user_id=user,
            seller_id=sid,
            amount=amount,
            currency=cur,
            properties=props,
        )
        self._emit(t, ev)

    def _refund(
        self, t: float, slug: str, user: str, sid: str, amount: float, cur: str, order_id: str
    ) -> None:
        reason = F.REFUND_REASONS[int(self.rng.random() * len(F.REFUND_REASONS))]
        props = {"order_id": order_id, "reason": reason}
        self._emit_money(RefundIssued, t, slug, user, sid, amount, cur, props)

    def start_refund_burst(self, a: Anomaly, t: float) -> None:
        """Refund a share of the seller's recent settled orders within the burst window."""
        assert a.seller_id is not None
        rng = self.rng
        slug, cur = a.tenant, self._tenants[self._tenant_index_of(a.tenant)].currency
        for r in self._backlog[a.seller_id]:
            # (settled at or after the window's end: nothing to refund inside it)
            if r.refunded or r.settle_t >= a.end or rng.random() >= a.magnitude:
                continue
            r.refunded = True
            t_ref = rng.uniform(max(t, r.settle_t), a.end)
            self._refund(t_ref, slug, r.user, a.seller_id, r.amount, cur, r.order_id)

    def _tenant_index_of(self, slug: str) -> int:
        return next(i for i, t in enumerate(self._tenants) if t.slug == slug)

    def _signup(self, t: float, ti: int) -> None:
        tenant = self._tenants[ti]
        user = f"{tenant.slug}-u{self._users[ti]:07d}"
        self._users[ti] += 1
        channel = F.SIGNUP_CHANNELS[int(self.rng.random() * len(F.SIGNUP_CHANNELS))]
        ev = UserSignup(
            event_id=self._id(),
            event_time=_fromts(t, UTC),
            tenant=tenant.slug,
            user_id=user,
            properties={"channel": channel},
        )
        self._emit(t, ev)
        if self.rng.random() < F.P_SIGNUP_WALLET:
            self._wallet(t + self.rng.uniform(30.0, 900.0), ti, user)

    def _wallet(self, t: float, ti: int, user: str) -> None:
        provider = F.WALLET_PROVIDERS[int(self.rng.random() * len(F.WALLET_PROVIDERS))]
        ev = WalletConnected(
            event_id=self._id(),
            event_time=_fromts(t, UTC),
            tenant=self._tenants[ti].slug,
            user_id=user,
            properties={"provider": provider},
        )
        self._emit(t, ev)

    def _listing(self, t: float, ti: int) -> None:
        tenant = self._tenants[ti]
        # Big sellers list more, in proportion to their sales.
        seller = tenant.pick_seller(self.rng.random())
        self._listings += 1
        category = F.CATEGORIES[int(self.rng.random() * len(F.CATEGORIES))]
        ev = ListingCreated(
            event_id=self._id(),
            event_time=_fromts(t, UTC),
            tenant=tenant.slug,
            seller_id=seller.seller_id,
            properties={
                "listing_id": f"{seller.seller_id}-l{self._listings:08d}",
                "category": category,
            },
        )
        self._emit(t, ev)
