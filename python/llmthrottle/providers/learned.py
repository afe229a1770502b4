"""Limits learned from the provider's headers: the requests and tokens per minute (Azure's
requests per 10 seconds) a response announces for its (provider, API key, model or deployment)
become a limiter on the wrapper's state, so every
worker sharing that state spends the provider's quota together instead of discovering it by
429s. Announced limits apply whether or not limits were configured: llmthrottle never sends more
than the provider said it takes. A later announcement of other numbers replaces them.

Each call is admitted at its worst case (input plus its output reservation) and reconciled with
its real usage when it settles, as any reservation is. What a call did not use comes back whole
(`"refund": "whole"`), as at the provider, whose buckets charge a call's estimate and adjust it
to the real usage at the end: with the engine's default refund, which gives back only what of a
charge has not drained as if it were alone, every call in flight would keep a share of the
limit that nothing used.

They are kept in step with the provider's own count (its `remaining`): a refusal's count is taken
(the refused attempt's reservation given back only then), and a call sent before the limits were
known, which they never reserved, is charged when its reply comes. Until a key's limits are
known, one call per process goes and the others wait for its reply (`first_reply`), so that the
calls sent blind are few.
"""

from __future__ import annotations

import functools
import hashlib
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

from .._native import ConfigError
from ..limiter import Limiter
from .headers import Announcement

# An announced limit as `headers.announced_limits` gives it, or as the plain tuple of the same
# fields that `headers.announced_tuples` gives.
Announced = Announcement | tuple[str, int, int, float | None, float]

__all__ = ["TEACH", "Learned", "LearnedLimits"]

# What `LearnedLimits.first_reply` tells the call that goes first to a provider key nothing is
# known of: its reply teaches the limits, and it says so with `taught`.
TEACH = object()
# How long the other calls wait for that reply, at most.
_FIRST_REPLY_S = 10.0
# Provider keys remembered as announcing no limits, at most (then forgotten, and asked again).
_MAX_SILENT = 10_000
# How often a call larger than a learned limit is sent all the same, per provider key: the
# provider is asked again whether the limit stands.
_RECHECKS = {"recheck": {"rate": "1/min", "burst": 1}}

# The dimensions a provider announces, each over the window the announcement names.
_DIMENSIONS = ("requests", "tokens", "input_tokens", "output_tokens")


def _tokens(family: str, input_tokens: int, output_tokens: int) -> int:
    """What a call counts toward a provider's `tokens` limit: Anthropic's counts the input (its
    output has limits of its own), OpenAI's the input plus the output reservation."""
    return input_tokens if family == "anthropic" else input_tokens + output_tokens


def _summary_dimension(limits: tuple[tuple[str, int, float], ...]) -> str | None:
    """The announced dimension that only restates others: Anthropic's `tokens` beside its
    `input_tokens` and `output_tokens` is whichever of their limits is most restrictive at the
    moment (often the output limit), not a limit of its own; charged with a call's input it
    would hold the input to the output limit. Its limits are kept (announcements are compared
    whole) but not enforced; its `remaining` of 0 is news the limits it restates tell too."""
    announced = {dimension for dimension, _limit, _window_s in limits}
    return "tokens" if "tokens" in announced and announced & {"input_tokens", "output_tokens"} else None


def _rate(limit: int, window_s: float) -> str:
    return f"{limit}/min" if window_s == 60.0 else f"{limit}/{window_s:g}s"


@functools.lru_cache(maxsize=256)
def _keepable(limit: int, window_s: float) -> bool:
    """Whether a limiter can keep `limit` per `window_s`. One above what the engine keeps (more
    than one unit per nanosecond) is a limit nothing could reach, announced by a provider that
    means none: it is not learned, rather than refused on every call."""
    try:
        Limiter({"amount": _rate(limit, window_s)})
    except ConfigError:
        return False
    return True


def _catch_up(limiter: Limiter, key: str, remaining: dict[str, int]) -> None:
    """Charges `key` what the provider says is used and the limiter does not count yet: each
    dimension of `remaining` is left with at most that much (below 0: in debt by as much). What
    the limiter counts already (another worker's charges, or its own reservations) is not
    charged twice."""
    if not remaining:
        return
    more = {}
    for status in limiter.status(key):
        if status.kind == "rate" and status.dimension in remaining:
            excess = int(status.remaining) - remaining[status.dimension]
            if excess >= 1:
                more[status.dimension] = excess
    if more:
        limiter.charge(key, **more)


class Learned:
    """What is known of one provider key: the `(dimension, limit, window_s)` announced, the
    rates enforced of them and the limiter that keeps them."""

    __slots__ = ("_by_position", "_caps", "_smallest_cap", "dimensions", "limiter", "limits", "rates", "summary")

    def __init__(self, limits: tuple[tuple[str, int, float], ...], limiter: Limiter, rates: dict[str, Any]) -> None:
        self.limits = limits
        self.limiter = limiter
        self.rates = rates
        self.summary = _summary_dimension(limits)
        # Read on every call: kept, not asked of the limiter.
        self.dimensions = frozenset(limiter.dimensions)
        # Requests and tokens are what most providers announce: those two go to `try_acquire`
        # by position, with no keyword dict to build.
        self._by_position = self.dimensions <= {"requests", "tokens"}
        self._caps = {dimension: limit for dimension, limit, _window_s in limits}
        self._smallest_cap = min(self._caps.values())

    def amounts(self, family: str, input_tokens: int, output_tokens: int) -> dict[str, int]:
        """A call's amounts in the dimensions limited (tokens as `_tokens` counts them; Anthropic's
        input and output apart); requests count 1."""
        dimensions = self.dimensions
        amounts: dict[str, int] = {}
        if "tokens" in dimensions:
            amounts["tokens"] = _tokens(family, input_tokens, output_tokens)
        if "input_tokens" in dimensions:
            amounts["input_tokens"] = input_tokens
        if "output_tokens" in dimensions:
            amounts["output_tokens"] = output_tokens
        return amounts

    def counted(self, family: str, input_tokens: int, output_tokens: int) -> dict[str, int]:
        """`amounts` to charge for a call the provider counted, each at most its whole limit: no
        call counts more at the provider (it would have refused it), and a garbled usage must
        not put the key in debt for longer than a window."""
        amounts = self.amounts(family, input_tokens, output_tokens)
        if input_tokens + output_tokens > self._smallest_cap:  # no amount is above its sum
            caps = self._caps
            for name, amount in amounts.items():
                amounts[name] = min(amount, caps[name])
        return amounts

    def try_acquire(self, key: str, family: str, input_tokens: int, output_tokens: int) -> Any:
        """The limiter's decision on a call now (its `amounts`), without waiting."""
        if self._by_position:
            tokens = _tokens(family, input_tokens, output_tokens) if "tokens" in self.dimensions else None
            return self.limiter.try_acquire(key, None, tokens)
        return self.limiter.try_acquire(key, **self.amounts(family, input_tokens, output_tokens))


class LearnedLimits:
    """The announced limits per provider key, on `state` (None: this process only)."""

    def __init__(self, state: Any = None) -> None:
        self._state = state
        self._learned: dict[str, Learned] = {}
        # Provider keys whose first reply is awaited: when each wait ends at the latest.
        self._teaching: dict[str, tuple[threading.Event, float]] = {}
        # Provider keys whose first reply announced no limits: nothing to wait for again.
        self._silent: set[str] = set()
        # One call too large for a key's limits sent a minute, by every worker on the state.
        self._rechecks = Limiter(_RECHECKS, state=state, namespace="llmthrottle.learned-recheck")
        self._lock = threading.Lock()

    def first_reply(self, key: str) -> threading.Event | object | None:
        """Before a call to `key`, of which nothing is known yet: the first call goes (TEACH: it
        must call `taught` when its answer comes or it ends) and the others wait for its reply
        (an Event, set by `taught`), so that no burst leaves before the limits are known: calls
        sent blind are counted only from the replies that come back. None: go (the limits are
        known, or the provider announced none)."""
        if key in self._learned or key in self._silent:
            return None
        now = time.monotonic()
        with self._lock:
            teaching = self._teaching.get(key)
            if teaching is not None and now < teaching[1]:
                return teaching[0]
            # No call is teaching the key, or the one that was has not answered in time.
            self._teaching[key] = (threading.Event(), now + _FIRST_REPLY_S)
            return TEACH

    def first_reply_s(self, key: str) -> float:
        """Seconds left to wait for the first reply of `key` (0.0: none is awaited)."""
        teaching = self._teaching.get(key)
        return 0.0 if teaching is None or teaching[0].is_set() else max(0.0, teaching[1] - time.monotonic())

    def taught(self, key: str, answered: bool) -> None:
        """The call that went first to `key` has its answer (`answered`: its limits, if it
        announced any, are observed already) or ended without one, or with an error that says
        nothing of them (the next call goes first instead): the calls waiting for it go."""
        with self._lock:
            teaching = self._teaching.pop(key, None)
            if answered and key not in self._learned:
                if len(self._silent) >= _MAX_SILENT:
                    self._silent.clear()
                self._silent.add(key)
        if teaching is not None:
            teaching[0].set()

    def recheck(self, key: str) -> bool:
        """A call is larger than a limit learned for `key` can ever admit: whether to send it all
        the same, unreserved (at most once a minute per key), so that its reply says whether the
        limit stands. A limit learned from one garbled reply, or raised since, is not kept for
        good; one that stands costs a refused call a minute, whatever the number of workers on
        the state."""
        return bool(self._rechecks.try_acquire(key, recheck=1))

    def observe(self, key: str, announced: Sequence[Announced]) -> None:
        # In the order the headers parser gives them, which is fixed per provider.
        limits = tuple(
            (dimension, limit, window_s)
            for dimension, limit, _remaining, _reset_s, window_s in announced
            if dimension in _DIMENSIONS and limit > 0 and _keepable(limit, window_s)
        )
        if not limits:
            return
        current = self._learned.get(key)
        if current is not None and current.limits == limits:
            return
        summary = _summary_dimension(limits)
        rates: dict[str, Any] = {
            dimension: {"rate": _rate(limit, window_s), "refund": "whole"}
            for dimension, limit, window_s in limits
            if dimension != summary
        }
        if current is not None and current.rates == rates:
            # Only what a summary restates moved (Anthropic's tightest limit changed, which it
            # may do every few replies): the limits kept are the same, nothing to set again.
            self._learned[key] = Learned(limits, current.limiter, rates)
            return
        if current is None:
            namespace = "llmthrottle.learned." + hashlib.sha256(key.encode()).hexdigest()[:16]
            limiter = Limiter(rates, state=self._state, namespace=namespace)
        else:
            # One namespace per key, whatever its limits become (a shared table registers each
            # for good). What the old limits counted carries over as the time it takes to refill,
            # at the new limits' pace.
            limiter = current.limiter
            limiter.set_limits(rates)
        self._learned[key] = Learned(limits, limiter, rates)
        if current is None:
            # Start where the provider is: what it says is used already (by this call, and by
            # whoever else shares the key) is charged, so the first calls do not overshoot. A
            # worker that learns the limits after another on the same state finds them counted.
            self.catch_up(key, announced)

    def catch_up(self, key: str, announced: Sequence[Announced], held: Mapping[str, Any] | None = None) -> None:
        """Takes the provider's count where it is above the learned limits' own: each learned
        limit of `key` is left with at most the `remaining` announced, less what `held` (a
        reservation about to be given back, which the provider did not count) holds of it.
        What they count already (another worker's charges, or reservations the provider has not
        seen yet) is not charged twice."""
        learned = self._learned.get(key)
        if learned is not None:
            held = held or {}
            _catch_up(
                learned.limiter,
                key,
                {
                    dimension: remaining - int(held.get(dimension, 0))
                    for dimension, limit, remaining, _reset_s, _window_s in announced
                    if dimension in learned.rates and 0 <= remaining < limit
                },
            )

    def charge_unreserved(
        self, key: str, family: str, input_tokens: int, output_tokens: int, requests: int = 1
    ) -> None:
        """Charges `key`'s learned limits (what the provider counted of) a call that they never
        reserved: it left before they were known, or was too large for them."""
        learned = self._learned.get(key)
        if learned is not None:
            amounts: dict[str, int] = learned.counted(family, input_tokens, output_tokens)
            if requests and "requests" in learned.dimensions:
                amounts["requests"] = requests
            amounts = {name: amount for name, amount in amounts.items() if amount}
            if amounts:
                learned.limiter.charge(key, **amounts)

    def exhausted(self, key: str, dimension: str) -> Learned | None:
        """The provider says nothing is left of `dimension` for `key`: the learned limit that
        keeps it is told so (charged what it still thought was left), so that calls wait for
        the refill they need, as at the provider. What is known of `key`, None when nothing."""
        learned = self._learned.get(key)
        if learned is None or dimension not in learned.dimensions:
            return learned
        _catch_up(learned.limiter, key, {dimension: 0})
        return learned

    def limits_of(self, key: str) -> tuple[tuple[str, int, float], ...]:
        """The `(dimension, limit, window_s)` learned for `key`, as `observe` keeps them; ()
        when none are."""
        learned = self._learned.get(key)
        return learned.limits if learned is not None else ()

    def of(self, key: str) -> Learned | None:
        """What is known of `key`, None when no limits are."""
        return self._learned.get(key)
