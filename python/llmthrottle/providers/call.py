"""One LLM call through the wrapper, from the request the SDK built to the ledger record: what
the sync and async transports share. The transports only move bytes and wait.

A call is admitted at its worst case (the body as the provider counts it) before the first
attempt, and again before every retry (the provider counts every attempt). A stream is read as
it passes to the caller; a whole reply is read (decoded, as the SDK reads it) before the caller
gets it. When the body ends the call is reconciled with the usage in it, priced and recorded. A
stream the caller abandons is settled with the input and what was received; a whole reply cut
off after its status (the provider billed it) is charged and recorded at its worst case.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

from .._json import loads
from .._native import ExceedsCapacity, RateLimited
from ..guard import Guard, GuardedCall
from ..pricing import cost as price_of
from ..pricing.table import Cost, PriceTable
from ..pricing.usage import limited_tokens, normalize_usage
from ..request_estimate import estimate_counts
from ..tokens import count_tokens
from .attribution import context_keys, context_tags
from .cache import CachedReply, ResponseCache
from .headers import announced_news, announced_tuples, retry_after_s
from .learned import TEACH, LearnedLimits
from .models import as_sent, priced_model, request_model
from .pause import ProviderPause, limit_scope
from .protocol import Endpoint, UsageReader, endpoint_of, failure_kind, whole_usage
from .reports import CallReport, listening, report
from .sending import announce_send
from .size import fit_request

__all__ = ["CallPlan", "Settings"]

KeysOption = Sequence[str] | Callable[[dict[str, Any]], Sequence[str]] | None


@dataclass(frozen=True)
class Settings:
    """How a wrapped client treats its calls (see `llmthrottle.wrap`)."""

    guard: Guard | None
    pause: ProviderPause
    learned: LearnedLimits
    keys: KeysOption = None
    max_attempts: int = 6
    deadline_s: float = 600.0
    max_retry_after_s: float = 120.0
    backoff_base_s: float = 0.5
    backoff_cap_s: float = 30.0
    include_stream_usage: bool = True
    # None: a call waits for admission as long as its deadline allows; the gateway answers 429
    # instead of queueing past its own limit.
    admission_timeout_s: float | None = None
    # The per-request token cap (see size.py): None, no cap.
    max_request_tokens: int | None = None
    trim_to_fit: bool = False
    # The exact response cache (see cache.py): None, no cache.
    cache: ResponseCache | None = None
    # The model each request name (an Azure deployment) stands for (see models.py).
    model_of: Mapping[str, str] | None = None
    # Whether a budget at its end may downgrade a call to its cheaper model: only for a caller
    # that sends `call.model` (the gateway); a wrapped SDK's request is sent as it was made.
    downgrade: bool = False
    # The base error of a wrapped SDK that wraps the others: llmthrottle's errors are raised as it too
    # (see sdk_errors.py).
    sdk_error: type[Exception] | None = None


class CallPlan:
    """The state of one request; `None` from `start` means "not an LLM call: pass it on"."""

    # One is made per call: slots keep it small and its attributes quick to reach.
    __slots__ = (
        "_estimated",
        "answer_headers",
        "attempts",
        "azure_deployment",
        "body",
        "cache_key",
        "call",
        "content",
        "deadline",
        "endpoint",
        "first_byte_s",
        "hide_usage_chunk",
        "in_flight",
        "last_failure",
        "learned_reservation",
        "output_unreserved",
        "pause_key",
        "reads_reply",
        "reported",
        "settings",
        "settled",
        "started",
        "status",
        "streaming",
        "teaching",
        "waited_s",
    )

    def __init__(
        self,
        settings: Settings,
        endpoint: Endpoint,
        body: dict[str, Any],
        content: bytes,
        hide_usage_chunk: bool,
        pause_key: str,
        cache_scope: str = "",
        reads_reply: bool = True,
    ) -> None:
        self.settings = settings
        self.reads_reply = reads_reply
        self.pause_key = pause_key
        self.endpoint = endpoint
        self.body = body
        self.content = content
        self.hide_usage_chunk = hide_usage_chunk
        self.streaming = bool(body.get("stream"))
        self.started = time.monotonic()
        self.deadline = self.started + settings.deadline_s
        self.attempts = 0
        self.waited_s = 0.0
        self.call: GuardedCall | None = None
        self.first_byte_s: float | None = None
        self.settled = False
        self.reported = False
        self.status: int | None = None
        self.last_failure: str | None = None
        self.learned_reservation: Any = None
        # Sent without a learned reservation, its output is still to charge when it settles.
        self.output_unreserved = False
        self.teaching = False
        # An attempt has left and no answer came back yet: the provider may be billing it.
        self.in_flight = False
        self.answer_headers: Any = None
        self._estimated: tuple[int, int] | None = None
        self.azure_deployment: str | None = None
        self.cache_key = (
            settings.cache.key(f"{cache_scope}|{pause_key}", endpoint.kind, body)
            if settings.cache is not None and not self.streaming
            else None
        )

    @classmethod
    def start(
        cls,
        settings: Settings,
        method: str,
        host: str,
        path: str,
        headers: Any,
        content: bytes,
        cache_scope: str = "",
        parsed: dict[str, Any] | None = None,
        port: int | None = None,
    ) -> CallPlan | None:
        """The plan of an LLM request, or None for anything else. `cache_scope` narrows whose
        identical requests share a cached reply (the gateway's tenant); `parsed` is `content`
        already read as JSON, by a caller that wrote `content` from it; `port` is the one the
        URL names (None: the scheme's own)."""
        endpoint = endpoint_of(method, path, host)
        if endpoint is None:
            return None
        try:
            body = parsed if parsed is not None else loads(content) if content else None
        except (ValueError, RecursionError):
            return None  # the provider will refuse it; nothing to count
        if not isinstance(body, dict):
            return None
        named = request_model(endpoint, body, settings)
        if named is None:
            return None
        name, model, wire_model = named
        if model != wire_model:
            body = {**body, "model": model}  # counted and priced as `model`; sent as it came
        # Whether anything reads the reply: the guard prices it, the cache keeps it, an
        # `lt.calls()` block reports it, or learned limits reconcile its output (Anthropic counts
        # the output produced). When nothing does, the reply reaches the caller as the SDK asked
        # for it, unread, and the call is settled when the answer comes.
        reads_reply = (
            settings.guard is not None
            or settings.cache is not None
            or not endpoint.counts_reserved_output
            or listening()
        )
        original, hide = body, False
        if (
            reads_reply
            and settings.include_stream_usage
            and endpoint.kind == "chat"
            and body.get("stream")
            and not (body.get("stream_options") or {}).get("include_usage")
        ):
            body = {**body, "stream_options": {**(body.get("stream_options") or {}), "include_usage": True}}
            hide = True
        if settings.max_request_tokens is not None:
            body = fit_request(body, endpoint.family, endpoint.kind, settings.max_request_tokens, settings.trim_to_fit)
        if hide or body is not original:
            content = json.dumps(as_sent(body, wire_model), separators=(",", ":")).encode()
        key, cache_scope = limit_scope(endpoint, host, port, path, headers, name, cache_scope)
        plan = cls(settings, endpoint, body, content, hide, key, cache_scope, reads_reply)
        if endpoint.azure_deployment is not None:
            plan.azure_deployment = name
        return plan

    # ------------------------------------------------------------------ admission

    def keys(self) -> list[str]:
        option = self.settings.keys
        given = list(option(self.body) if callable(option) else option or ())
        return [*given, *(k for k in context_keys() if k not in given)] or [f"model:{self.body['model']}"]

    def remaining_s(self) -> float:
        return max(0.0, self.deadline - time.monotonic())

    def admission_timeout(self) -> float:
        """How long admission may wait: the call's deadline, or less when the settings say so."""
        limit = self.settings.admission_timeout_s
        return self.remaining_s() if limit is None else min(limit, self.remaining_s())

    def admit_arguments(self) -> dict[str, Any]:
        arguments: dict[str, Any] = {
            "provider": self.endpoint.family,
            "timeout": self.admission_timeout(),
            "downgrade": self.settings.downgrade,
            **context_tags(),
        }
        guard = self.settings.guard
        if guard is not None and guard.exact_tokens:
            # Counted once, by the endpoint the request was sent to, for the guard and the
            # learned limits alike.
            input_tokens, output_tokens = self.reserved_tokens()
            arguments.update(model=self.body["model"], input_tokens=input_tokens, max_output_tokens=output_tokens)
        else:
            arguments["body"] = self.body
        if self.azure_deployment is not None:
            arguments["azure_deployment"] = self.azure_deployment
        return arguments

    # ------------------------------------------------------------------ attempts

    def sending(self) -> None:
        """Counts the attempt about to be sent (admitted, its bytes not yet gone) and tells the
        enclosing `before_each_send` blocks, whose write-ahead work must end before it leaves."""
        self.attempts += 1
        announce_send(self.attempts)
        self.in_flight = True

    def admitted_at_once(self) -> bool:
        """Admits and counts the first attempt of a call that waits for nothing: no guard to
        ask, no provider pause, room in the learned limits now. False (nothing done, or the
        learned limits' decision kept for the loop to wait on): the call goes through the
        retry loop from its start."""
        if self.settings.guard is not None or self.settings.pause.wait_s(self.pause_key) > 0:
            return False
        if self.first_reply() is not None or self.learned_admission() is not None:
            return False
        self.sending()
        return True

    def pause_wait_s(self) -> float:
        """Seconds to wait before trying (a pause some worker recorded for this provider key);
        0.0: go. Raises RateLimited when the pause outlasts the call's deadline."""
        wait = self.settings.pause.wait_s(self.pause_key)
        if wait and wait > self.remaining_s():
            self.fail("rate_limited", paused_s=round(wait, 3))
            error = RateLimited(
                f"the provider asked every caller of {self.body['model']!r} on this key to wait "
                f"{wait:.1f}s, past this call's deadline ({self.settings.deadline_s:g}s)"
            )
            error.retry_after, error.limited_by, error.key = wait, "provider", self.pause_key
            raise error
        return wait

    def observe(self, status: int, headers: Any) -> None:
        """Reads an answer's status and the limits it announced: they become the provider key's
        learned limits, and one used up pauses every worker for the refill a call needs."""
        self.status, self.answer_headers, self.in_flight = status, headers, False
        learned = self.settings.learned
        known = learned.limits_of(self.pause_key)
        announced = announced_news(self.endpoint.provider, headers, known)
        if announced:
            learned.observe(self.pause_key, announced)
        self._taught(status < 400)
        reservation = self.learned_reservation
        if status >= 400 or reservation is None:
            # A refusal (charged nothing by the provider), or a call sent before the limits were
            # known (uncounted here): the provider's count is taken where it is above the
            # learned limits' own. A refused attempt's reservation is given back only then, so
            # that the room it held never shows as free to the other callers, even for a moment.
            if known or announced:
                if reservation is None and status < 400:
                    # Sent before the limits were known: charged here first. The provider's
                    # count includes it, but the learned limits' reservations it has not seen
                    # yet can hide it from `catch_up`.
                    try:
                        input_tokens, output_tokens = self.reserved_tokens()
                        if not self.endpoint.counts_reserved_output:
                            # The provider counts the output produced (Anthropic): charged from
                            # the reply's usage when it settles (`_settle_learned`).
                            output_tokens, self.output_unreserved = 0, True
                        learned.charge_unreserved(self.pause_key, self.endpoint.family, input_tokens, output_tokens)
                    except ValueError:  # a body the estimate refuses: nothing to charge
                        pass
                held = reservation.reserved if reservation is not None else {}
                learned.catch_up(self.pause_key, announced or announced_tuples(self.endpoint.provider, headers), held)
            self.release_learned()
        if not announced:
            return
        for dimension, limit, remaining, reset_s, _window_s in announced:
            if remaining == 0 and reset_s:
                # Capped as a 429's Retry-After is: one reply cannot stop every worker for
                # longer (a later call finds out whether the limit is still used up).
                refill_s = self._refill_s(dimension, limit, reset_s)
                self.settings.pause.pause(self.pause_key, min(refill_s, self.settings.max_retry_after_s))

    def _refill_s(self, dimension: str, limit: int, reset_s: float) -> float:
        """Nothing is left of `dimension` at the provider, whole again in `reset_s` (up to a
        window away): the learned limits are told so, and every worker on the state, those
        that learned no limits yet too, waits for the refill a call like this one needs. A limit
        the learned limits do not keep waits for the reset itself."""
        learned = self.settings.learned.exhausted(self.pause_key, dimension)
        if learned is None or limit <= 0:
            return reset_s
        if dimension == learned.summary:
            return 0.0  # the limits it restates are read on their own
        if dimension == "requests":
            return reset_s / limit
        try:
            amount = learned.amounts(self.endpoint.family, *self.reserved_tokens()).get(dimension, limit)
        except ValueError:  # a body the estimate refuses: the provider will refuse it too
            amount = limit
        return reset_s * min(1.0, amount / limit)

    def first_reply(self) -> threading.Event | None:
        """Before an attempt on a provider key nothing is known of: the first call goes, and its
        reply teaches the limits; the others wait for that reply (the Event returned, with
        `first_reply_s` left at most). None: go."""
        if self.teaching:
            return None
        found = self.settings.learned.first_reply(self.pause_key)
        if found is None:
            return None
        if found is TEACH:
            self.teaching = True
            return None
        return None if self.remaining_s() <= 0 else cast(threading.Event, found)

    def first_reply_s(self) -> float:
        """How long to wait for the first reply of this call's provider key, at most."""
        return min(self.settings.learned.first_reply_s(self.pause_key), self.remaining_s())

    def _taught(self, answered: bool) -> None:
        if self.teaching:
            self.teaching = False
            self.settings.learned.taught(self.pause_key, answered)

    @property
    def waits_in_line(self) -> bool:
        """Whether a call waiting on the learned limits holds a place in line (in arrival order):
        where the provider counts the whole reservation, as OpenAI's does. Where calls give back
        what they did not use (Anthropic's output), a place in line would not move up as the
        calls ahead give it back, so the call holds none and tries again until there is room."""
        return self.endpoint.counts_reserved_output

    def learned_admission(self) -> tuple[Any, dict[str, int]] | None:
        """Admits this attempt against the limits the provider announced. None when that is done:
        admitted at once (the reservation is kept), or no limits are known yet. Otherwise the
        (limiter, amounts) the caller waits on with `acquire(..., queue=self.waits_in_line)`. A
        previous attempt's admission is given back first."""
        if self.learned_reservation is not None:
            self.release_learned()
        learned = self.settings.learned.of(self.pause_key)
        if learned is None:
            return None
        input_tokens, output_tokens = self.reserved_tokens()
        family = self.endpoint.family
        # Most attempts fit at once: one decision, without the waiting loop around it.
        try:
            decision = learned.try_acquire(self.pause_key, family, input_tokens, output_tokens)
        except ExceedsCapacity:
            if not self.settings.learned.recheck(self.pause_key):
                raise
            return None  # sent unreserved, as a call before the limits were known is
        if decision:
            self.learned_reservation = decision
            return None
        return learned.limiter, learned.amounts(family, input_tokens, output_tokens)

    def reserved_tokens(self) -> tuple[int, int]:
        if self.call is not None:
            return self.call._reserved_tokens
        if self._estimated is None:  # once per call, not per attempt
            # Learned limits are the provider's own count, approximated: a model name llmthrottle
            # has no tokenizer for (an Azure deployment's, say) is counted with o200k_base. A
            # guard counts as `lt.estimate` does, which refuses such a model.
            kind = self.endpoint.kind
            self._estimated = estimate_counts(
                self.body,
                self.endpoint.family,
                None if kind == "messages" else kind,
                None if self.settings.guard is not None else "o200k_base",
            )
        return self._estimated

    def release_learned(self) -> None:
        if self.learned_reservation is not None:
            self.learned_reservation.cancel()
            self.learned_reservation = None

    def _settle_learned(self, usage: Any) -> None:
        reservation, self.learned_reservation = self.learned_reservation, None
        if reservation is None:
            if self.output_unreserved:
                self.output_unreserved = False
                self._charge_unreserved_output(usage)
            return
        if self.endpoint.counts_reserved_output:
            reservation.commit()  # the provider counts the output reservation, used or not
            return
        learned = self.settings.learned.of(self.pause_key)
        try:
            input_tokens, output_tokens = limited_tokens(usage, self.endpoint.family, self.body["model"])
        except (ValueError, TypeError):
            learned = None  # unreadable usage: keep the worst case
        if learned is None:
            reservation.commit()
            return
        reservation.commit(**learned.counted(self.endpoint.family, input_tokens, output_tokens))

    def _charge_unreserved_output(self, usage: Any) -> None:
        """A call sent without a learned reservation was charged its input: its output as the
        reply's usage says (unreadable: its whole reservation), as the provider counts it."""
        try:
            output_tokens = limited_tokens(usage, self.endpoint.family, self.body["model"])[1]
        except (ValueError, TypeError):
            output_tokens = self.reserved_tokens()[1]
        self.settings.learned.charge_unreserved(self.pause_key, self.endpoint.family, 0, output_tokens, requests=0)

    def next_wait(self, status: int, headers: Any, body: bytes) -> float | None:
        """After an error answer: seconds to wait before the next attempt, or None to give the
        answer to the caller (not retryable, attempts or deadline used up)."""
        kind = self.last_failure = failure_kind(self.endpoint, status, body)
        if kind == "fatal":
            return None
        told = retry_after_s(headers) if kind == "rate_limited" else None
        if told is not None:
            wait = min(told, self.settings.max_retry_after_s)
        else:  # exponential backoff with full jitter
            ceiling = min(self.settings.backoff_cap_s, self.settings.backoff_base_s * 2 ** (self.attempts - 1))
            wait = random.uniform(0, ceiling)
        if kind == "rate_limited":
            # Every worker on the state waits it out, this one too (in `pause_wait_s`, before its
            # next attempt), even when this call gives up.
            self.settings.pause.pause(self.pause_key, max(wait, 0.001))
        if self.attempts >= self.settings.max_attempts or wait > self.remaining_s():
            return None
        return 0.0 if kind == "rate_limited" else wait

    def transport_error_wait(self) -> float | None:
        """After a transport error (the attempt is taken as never billed): seconds to wait
        before the next attempt, or None to give up."""
        self.in_flight = False
        if self.attempts >= self.settings.max_attempts:
            return None
        ceiling = min(self.settings.backoff_cap_s, self.settings.backoff_base_s * 2 ** (self.attempts - 1))
        wait = random.uniform(0, ceiling)
        return wait if wait <= self.remaining_s() else None

    # ------------------------------------------------------------------ the response cache

    def cached_reply(self) -> CachedReply | None:
        """The reply kept for this exact request, recorded as a `cache_hit` at $0; None on a
        miss (or without a cache)."""
        cache = self.settings.cache
        hit = cache.get(self.cache_key) if cache is not None and self.cache_key is not None else None
        if hit is None:
            return None
        self.settled = True
        guard = self.settings.guard
        if guard is not None:
            guard.record_unadmitted(
                self.keys(),
                model=self.body["model"],
                provider=self.endpoint.family,
                outcome="cache_hit",
                latency_s=time.monotonic() - self.started,
                **context_tags(),
            )
        self._report("cache_hit", None, None, hit.status)
        return hit

    def _keep_reply(self, reader: UsageReader) -> None:
        cache = self.settings.cache
        if cache is not None and self.cache_key is not None and reader.complete and (self.status or 0) < 400:
            headers = self.answer_headers
            content_type = (headers.get("content-type") if headers is not None else None) or "application/json"
            cache.put(self.cache_key, CachedReply(self.status or 200, content_type, reader.body))

    # ------------------------------------------------------------------ settling

    def _tags(self) -> dict[str, Any]:
        tags: dict[str, Any] = {"attempts": self.attempts, "waited_s": round(self.waited_s, 3)}
        if self.first_byte_s is not None and self.streaming:
            tags["ttft_s"] = round(self.first_byte_s, 4)
        return tags

    def given_up_outcome(self) -> str:
        """The outcome of a call whose last answer is handed to the caller as an error."""
        return "rate_limited" if self.last_failure == "rate_limited" else "error"

    def interrupted(self, error: BaseException) -> None:
        """The call stopped on `error`. While no attempt is on its way (or a transport error
        ended it) it is refunded and recorded at $0, outcome `error`. An attempt the caller
        interrupted on its way (Ctrl-C, a cancelled task, a timeout around the call) may be
        billed by the provider, whose usage will never be known: it is charged and recorded at
        its worst case, outcome `unfinished` (over-counting, never under-counting)."""
        if not self.in_flight:
            self.fail("error", error=type(error).__name__)
            return
        self._at_worst_case(None, error=type(error).__name__)

    def _at_worst_case(self, status: int | None, **tags: Any) -> None:
        """The provider may have billed the call, and its usage will never be known: charged
        and recorded at its worst case, outcome `unfinished` (over-counting, never
        under-counting); the learned limits keep their charge, as the provider counted it."""
        self.in_flight = False
        self._taught(False)
        self._settle_learned(None)
        if self.call is not None and not self.settled:
            self.settled = True
            self.call.unfinished(**self._tags(), **tags)
        self._report("unfinished", None, None, status)

    def cut_off(self, error: BaseException) -> None:
        """A whole reply stopped on `error` after its status came: the provider answered, so it
        billed the call, whose usage will never be known. Charged and recorded at its worst
        case (`unfinished`), as an attempt interrupted on its way is."""
        self._at_worst_case(None, error=type(error).__name__)

    def fail(self, outcome: str, **tags: Any) -> None:
        self.in_flight = False
        self._taught(False)
        self.release_learned()
        if self.call is not None and not self.settled:
            self.settled = True
            self.call.fail(outcome, **self._tags(), **tags)
        status = tags.get("status")
        self._report(outcome, None, None, status if isinstance(status, int) else None)

    def _report(self, outcome: str, usage: Any, cost: Cost | None, status: int | None) -> None:
        """Hands the call's `CallReport` to the enclosing `lt.calls()` blocks, once. An
        `unfinished` call is reported at its worst case, as the ledger records it."""
        if self.reported:
            return
        self.reported = True
        if not listening():
            return
        family = self.endpoint.family
        model = self.body["model"]
        if outcome == "unfinished":
            model, input_tokens, output_tokens, cost_micros = self._worst_case()
            priced = False
        else:
            if cost is None and usage is not None:
                try:
                    cost = price_of(model, usage, family)
                except ValueError:  # an unknown model (ConfigError) or unreadable usage
                    cost = None
            tokens = cost.usage if cost is not None else None
            if tokens is None and usage is not None:
                try:
                    tokens = normalize_usage(usage, family)
                except (ValueError, TypeError):
                    tokens = None
            input_tokens = tokens.prompt_tokens if tokens is not None else 0
            output_tokens = tokens.output_tokens if tokens is not None else 0
            cost_micros = cost.total_micros if cost is not None else 0
            priced = cost is not None
        report(
            CallReport(
                model=model,
                provider=family,
                outcome=outcome,
                input_tokens=input_tokens,
                output_tokens=output_tokens,
                cost_micros=cost_micros,
                priced=priced,
                attempts=self.attempts,
                waited_s=round(self.waited_s, 6),
                latency_s=time.monotonic() - self.started,
                ttft_s=self.first_byte_s if self.streaming else None,
                status=status,
            )
        )

    def _worst_case(self) -> tuple[str, int, int, int]:
        """(model, input tokens, output reservation, micro-dollars) of the call at its worst
        case, as the guard charges an `unfinished` call (0s when it cannot be priced)."""
        model = self.call.model if self.call is not None else self.body["model"]  # a budget's downgrade
        guard = self.settings.guard
        try:
            input_tokens, output_tokens = self.reserved_tokens()
            worst = (guard.prices if guard is not None else PriceTable.default()).worst_case_cost(
                model, input_tokens, output_tokens, self.endpoint.family
            )
        except ValueError:  # a model without a price, or a body the estimate refuses
            return model, 0, 0, 0
        return model, input_tokens, output_tokens, worst

    def _answered_by(self, model: str) -> None:
        """Azure named the model that answered: the call is priced and recorded as it, when the
        price table knows it."""
        guard = self.settings.guard
        served = priced_model(model, guard.prices if guard is not None else None)
        if served is not None and served != self.body["model"]:
            self.body = {**self.body, "model": served}
            if self.call is not None:
                self.call.model = served

    def streams_reply(self, content_type: str | None) -> bool:
        """Whether the reply (of `content_type`) to a streaming request is a stream. A JSON reply
        (from a provider or a proxy that ignored `stream`) is not: the call is then read and
        settled as a whole reply is."""
        if content_type is not None and content_type[:16].lower() == "application/json":
            self.streaming = False
        return self.streaming

    def reader(self) -> UsageReader:
        return UsageReader(self.endpoint, self.hide_usage_chunk)

    def _final_usage(self, reader: UsageReader) -> tuple[Any, str]:
        """The usage to settle with and the outcome: the reply's own, or for a stream abandoned
        (or ended without usage) the input as estimated plus what was received."""
        if reader.complete and reader.usage is not None:
            return reader.usage, "error" if reader.failed else "ok"
        received = count_tokens("".join(reader.text_parts), encoding="o200k_base") if reader.text_parts else 0
        told = reader.usage
        if self.endpoint.family == "anthropic":
            if told is not None and type(told.get("input_tokens")) is int:
                # Anthropic's message_start told the input, cache reads and writes included; a
                # message_delta, the output so far (tool calls too, which the text does not show).
                counted = told.get("output_tokens")
                output = max(received, counted) if type(counted) is int else received
                return {**told, "output_tokens": output}, "ok" if reader.complete else "cancelled"
            usage = {"input_tokens": self.reserved_tokens()[0], "output_tokens": received}
        elif told is not None:
            # An OpenAI stream's usage comes last, after everything it counts: a stream cut off
            # after it (no `[DONE]`) is settled with it.
            return told, "ok" if reader.complete else "cancelled"
        else:
            usage = {"prompt_tokens": self.reserved_tokens()[0], "completion_tokens": received}
        return usage, "ok" if reader.complete else "cancelled"

    def settle_unread(self) -> None:
        """Settles a call whose reply nothing reads (`reads_reply` is False, or nothing came to
        read it since): the learned limits keep what they reserved, as the provider counts it."""
        # Only OpenAI's family gets here holding a learned reservation, and it keeps its whole
        # charge: a reservation let go unsettled keeps what it took (learned limits hold no
        # concurrency to give back), so no call into the engine is needed to commit it.
        self.learned_reservation = None
        self.reported = True

    def settle_whole(self, body: bytes) -> None:
        """A whole (non-streaming) reply was read: reconcile, price, record, report. A reply
        whose usage cannot be read is charged and recorded at its worst case."""
        if self.call is None and self.cache_key is None and self.azure_deployment is None and not listening():
            # Only the learned limits read it (Anthropic's output reconciled): its usage is all
            # that is needed, without a reader.
            usage = whole_usage(body)
            if usage is not None:
                self.reported = True
                self._settle_learned(usage)
                return
        reader = self.reader()
        reader.take_whole(body)
        self.settle(reader)

    @property
    def unsettled(self) -> bool:
        """Whether something of the call is still to settle: its report, its learned limits'
        reservation or its guard's."""
        return (
            not self.reported
            or self.learned_reservation is not None
            or self.output_unreserved
            or (self.call is not None and not self.settled)
        )

    def settle(self, reader: UsageReader) -> None:
        """The body ended or was abandoned: reconcile, price, record, report."""
        if not self.unsettled:
            return
        if (
            self.call is None
            and self.settings.cache is None
            and (self.learned_reservation is None or self.endpoint.counts_reserved_output)
            and not self.output_unreserved
            and not listening()
        ):
            self.settle_unread()
            return
        if not self.streaming and not reader.complete:
            # A whole reply without readable usage (not JSON, no `usage` object): the provider
            # billed it for what it does not say.
            self._at_worst_case(self.status, usage="unreadable")
            return
        usage, outcome = self._final_usage(reader)
        self._settle_learned(usage)
        if self.endpoint.azure_deployment is not None and reader.model is not None:
            self._answered_by(reader.model)
        cost: Cost | None = None
        if self.call is not None and not self.settled:
            self.settled = True
            self.call.tags.update(self._tags())
            try:
                cost = self.call.finish(
                    usage, outcome=outcome, charge_reserved_output=self.endpoint.counts_reserved_output
                )
            except ValueError as error:
                if self.call.reservation.settled:
                    raise  # charged and recorded: what failed came after
                # Usage the price table cannot read (a count out of range, a cache write the
                # model has no price for): billed for what it does not say.
                self.settled = False
                self._at_worst_case(self.status, usage="unreadable", error=type(error).__name__)
                return
            finally:
                self._report(outcome, usage, cost if cost is not None else self.call.cost, self.status)
        if self.cache_key is not None:
            self._keep_reply(reader)
        self._report(outcome, usage, None, self.status)
