"""Limits learned from the provider's headers: the requests and tokens per minute (Azure's
requests per 10 seconds) a response announces for its (provider, API key, model or deployment)
become a limiter on the wrapper's state, so every
worker sharing that state spends the provider's quota together instead of discovering it by
429s. Announced limits apply whether or not limits were configured: llmthrottle never sends more
than the provider said it takes. A later announcement of other numbers replaces them.

Each call is admitted at its worst case (input plus its output reservation) and reconciled with
its real usage when it settles, as any reservation is.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from ..limiter import Limiter
from .headers import Announcement

# An announced limit as `headers.announced_limits` gives it, or as the plain tuple of the same
# fields that `headers.announced_tuples` gives.
Announced = Announcement | tuple[str, int, int, float | None, float]

__all__ = ["Learned", "LearnedLimits"]

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


class Learned:
    """What is known of one provider key: the `(dimension, limit, window_s)` announced, the
    rates enforced of them and the limiter that keeps them."""

    __slots__ = ("_by_position", "dimensions", "limiter", "limits", "rates", "summary")

    def __init__(self, limits: tuple[tuple[str, int, float], ...], limiter: Limiter, rates: dict[str, str]) -> None:
        self.limits = limits
        self.limiter = limiter
        self.rates = rates
        self.summary = _summary_dimension(limits)
        # Read on every call: kept, not asked of the limiter.
        self.dimensions = frozenset(limiter.dimensions)
        # Requests and tokens are what most providers announce: those two go to `try_acquire`
        # by position, with no keyword dict to build.
        self._by_position = self.dimensions <= {"requests", "tokens"}

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

    def observe(self, key: str, announced: Sequence[Announced]) -> None:
        # In the order the headers parser gives them, which is fixed per provider.
        limits = tuple(
            (dimension, limit, window_s)
            for dimension, limit, _remaining, _reset_s, window_s in announced
            if dimension in _DIMENSIONS and limit > 0
        )
        if not limits:
            return
        current = self._learned.get(key)
        if current is not None and current.limits == limits:
            return
        summary = _summary_dimension(limits)
        rates = {
            dimension: f"{limit}/min" if window_s == 60.0 else f"{limit}/{window_s:g}s"
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
            # Start where the provider is: what it says is used already (by this call, and by
            # whoever else shares the key) is charged, so the first calls do not overshoot.
            used = {
                dimension: limit - remaining
                for dimension, limit, remaining, _reset_s, _window_s in announced
                if dimension in rates and 0 <= remaining < limit
            }
            if used:
                limiter.charge(key, **used)
        else:
            limiter = current.limiter
            limiter.set_limits(rates)
        self._learned[key] = Learned(limits, limiter, rates)

    def exhausted(self, key: str, dimension: str) -> Learned | None:
        """The provider says nothing is left of `dimension` for `key`: the learned limit that
        keeps it is told so (charged what it still thought was left), so that calls wait for
        the refill they need, as at the provider. What is known of `key`, None when nothing."""
        learned = self._learned.get(key)
        if learned is None or dimension not in learned.dimensions:
            return learned
        left = sum(s.remaining for s in learned.limiter.status(key) if s.dimension == dimension and s.kind == "rate")
        if left >= 1:
            learned.limiter.charge(key, **{dimension: int(left)})
        return learned

    def limits_of(self, key: str) -> tuple[tuple[str, int, float], ...]:
        """The `(dimension, limit, window_s)` learned for `key`, as `observe` keeps them; ()
        when none are."""
        learned = self._learned.get(key)
        return learned.limits if learned is not None else ()

    def of(self, key: str) -> Learned | None:
        """What is known of `key`, None when no limits are."""
        return self._learned.get(key)
