"""The per-request token cap (`lt.wrap(..., max_request_tokens=N)`): a request whose input plus
output reservation (`lt.estimate`, as the provider counts it) exceeds N is refused before it is
sent, or, with `trim_to_fit=True`, loses its oldest conversation turns until it fits.

Trimming keeps what a conversation cannot lose: system and developer messages (and Anthropic's
top-level `system`), and the last message. Anthropic conversations must open with a user turn,
so turns are dropped up to the next user message. A request that still does not fit, or that
has no turns to drop (an embedding, a string prompt), is refused with `RequestTooLarge`.
"""

from __future__ import annotations

from typing import Any

from .._native import LlmthrottleError
from ..request_estimate import estimate

__all__ = ["RequestTooLarge", "fit_request"]

# Roles a trim never drops.
_KEPT_ROLES = frozenset(("system", "developer"))


class RequestTooLarge(LlmthrottleError, ValueError):
    """A request over the wrapper's `max_request_tokens`, refused before it was sent."""

    def __init__(self, message: str, *, requested: int, limit: int) -> None:
        super().__init__(message)
        self.requested = requested
        self.limit = limit


def fit_request(body: dict[str, Any], family: str, kind: str, limit: int, trim: bool) -> dict[str, Any]:
    """`body` when it fits in `limit` tokens; else a copy with its oldest turns dropped (when
    `trim`); else raises RequestTooLarge."""
    requested = _tokens(body, family, kind)
    if requested <= limit:
        return body
    if trim:
        field = "input" if kind == "responses" else "messages"
        turns = body.get(field)
        if isinstance(turns, list):
            # Each drop only shortens the request, so the fewest drops that fit are found by
            # bisection: a few counts of the body rather than one per dropped turn.
            candidates = [turns]
            while (dropped := _drop_oldest(candidates[-1], family)) is not None:
                candidates.append(dropped)
            low, high = 1, len(candidates) - 1
            if high >= 1 and _tokens({**body, field: candidates[high]}, family, kind) <= limit:
                while low < high:
                    middle = (low + high) // 2
                    if _tokens({**body, field: candidates[middle]}, family, kind) <= limit:
                        high = middle
                    else:
                        low = middle + 1
                return {**body, field: candidates[low]}
    how = "even with its oldest turns dropped" if trim else "(trim_to_fit=True drops the oldest turns)"
    raise RequestTooLarge(
        f"the request to {body.get('model')!r} counts {requested} tokens (input plus output reservation), "
        f"over max_request_tokens={limit}, {how}",
        requested=requested,
        limit=limit,
    )


def _tokens(body: dict[str, Any], family: str, kind: str) -> int:
    counted = estimate(body, "anthropic" if family == "anthropic" else "openai")
    return counted.input_tokens + (0 if kind == "embeddings" else counted.max_output_tokens)


def _drop_oldest(turns: list[Any], family: str) -> list[Any] | None:
    """`turns` without its oldest droppable turn (and, for Anthropic, up to the next user
    turn); None when nothing can go."""
    droppable = [
        i for i, turn in enumerate(turns[:-1]) if not (isinstance(turn, dict) and turn.get("role") in _KEPT_ROLES)
    ]
    if not droppable:
        return None
    rest = turns[: droppable[0]] + turns[droppable[0] + 1 :]
    if family == "anthropic":
        while len(rest) > 1 and isinstance(rest[0], dict) and rest[0].get("role") != "user":
            rest = rest[1:]
    return rest
