"""The httpx transports installed in a wrapped SDK client: every LLM request is admitted,
retried as the provider asks, and read on its way back (see `call.py` for the rules; these
classes only move bytes and wait). Requests that are not LLM calls pass through untouched.

The SDK's own retries are turned off by `wrap`, so there is one retry loop, this one, and every
attempt is admitted and counted.
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import functools
import logging
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, TypeVar

import httpx2

from .._native import LlmthrottleError
from .cache import CachedReply
from .call import CallPlan, Settings
from .protocol import UsageReader
from .reports import CallReport, current_sinks, reporting_to
from .sdk_errors import raise_through

__all__ = ["AsyncThrottledTransport", "ThrottledTransport", "attempts_async", "passed", "ended"]

# How often an asyncio call waiting for the first reply of a provider key looks again.
_FIRST_REPLY_POLL_S = 0.005


def _reads_stream(plan: CallPlan) -> bool:
    """Whether the reply's bytes are read as they pass (a stream the plan reads), which needs
    them uncompressed. A whole reply is read decoded, as the SDK would read it."""
    return plan.streaming and plan.reads_reply


def _rebuilt(request: httpx2.Request, plan: CallPlan, content: bytes) -> httpx2.Request:
    """The request with the body the plan rewrote, if it did, asking for an uncompressed reply
    when its stream is read. Building a new request costs more than the rest of the wrapper's
    work, so an unchanged body is only given the header. Called only when one of the two is
    needed."""
    reads_stream = _reads_stream(plan)
    if plan.content is content:
        request.headers["accept-encoding"] = "identity"
        return request
    dropped = ("content-length", "accept-encoding") if reads_stream else ("content-length",)
    headers = [(k, v) for k, v in request.headers.multi_items() if k.lower() not in dropped]
    if reads_stream:
        headers.append(("accept-encoding", "identity"))
    return httpx2.Request(
        request.method, request.url, headers=headers, content=plan.content, extensions=request.extensions
    )


def _cached_response(hit: CachedReply, request: httpx2.Request) -> httpx2.Response:
    return httpx2.Response(
        hit.status,
        headers={"content-type": hit.content_type, "x-llmthrottle-cache": "hit"},
        content=hit.content,
        request=request,
    )


def _error_response(response: httpx2.Response, body: bytes) -> httpx2.Response:
    """The error answer handed to the SDK once the retry loop gave up, marked so that the SDK
    does not retry it (`x-should-retry: false`, which both SDKs obey): one loop, never two, even
    on a client whose own retries are on (the client given to `lt.wrap`, which shares its
    transport, or one made with `with_options(max_retries=...)`)."""
    headers = response.headers.copy()
    headers["x-should-retry"] = "false"
    return httpx2.Response(response.status_code, headers=headers, content=body, extensions=response.extensions)


def passed(plan: CallPlan, reader: UsageReader, chunk: bytes) -> bytes:
    """One chunk of the reply on its way to the caller: what to pass on."""
    if plan.first_byte_s is None:
        plan.first_byte_s = time.monotonic() - plan.started
    return reader.feed(chunk)


def ended(plan: CallPlan, reader: UsageReader) -> bytes:
    """The reply's end: the call is settled; returns the bytes still held back."""
    tail = reader.finish()
    plan.settle(reader)
    return tail


# Streams collected neither read to their end nor closed (the caller raised before reading
# one), with the `calls()` blocks they were made in: settled within half a second by a thread
# of llmthrottle's (a dropped call may hold a concurrency slot another caller waits for), by the
# next call through a wrapped client if it comes first, or at exit. Not from the finalizer
# itself, which runs wherever the collector does: in another call's context, inside the
# ledger's lock.
_DROPPED: collections.deque[tuple[CallPlan, UsageReader, tuple[list[CallReport], ...]]] = collections.deque()
_SETTLE_EVERY_S = 0.5
_SETTLER: list[threading.Thread] = []
_SETTLER_LOCK = threading.Lock()
_log = logging.getLogger("llmthrottle")


def _dropped(plan: CallPlan, reader: UsageReader, sinks: tuple[list[CallReport], ...]) -> None:
    if plan.unsettled:
        _DROPPED.append((plan, reader, sinks))


@atexit.register
def settle_dropped() -> None:
    """Settles the calls of the streams dropped unsettled since the last time, as streams
    abandoned at the point they reached."""
    while _DROPPED:
        try:
            plan, reader, sinks = _DROPPED.popleft()
        except IndexError:  # another thread took the last one
            return
        with reporting_to(sinks):
            try:
                plan.settle(reader)
            except Exception:  # its ledger closed (at exit), or its state failed
                _log.warning("llmthrottle: the call of a stream dropped unread could not be settled", exc_info=True)


def _settle_dropped_forever() -> None:
    while True:
        time.sleep(_SETTLE_EVERY_S)
        if _DROPPED:
            settle_dropped()


def _start_settler() -> None:
    """Starts the thread that settles dropped streams, once per process (and again in a child
    forked after it started, where it does not run)."""
    with _SETTLER_LOCK:
        if _SETTLER and _SETTLER[0].is_alive():
            return
        thread = threading.Thread(target=_settle_dropped_forever, name="llmthrottle-dropped-streams", daemon=True)
        thread.start()
        _SETTLER[:] = [thread]


class _ObservedStream(httpx2.SyncByteStream):
    def __init__(self, inner: Any, plan: CallPlan, reader: UsageReader) -> None:
        self._inner, self._plan, self._reader = inner, plan, reader
        self._sinks = current_sinks()

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self._inner:
            kept = passed(self._plan, self._reader, chunk)
            if kept:
                yield kept
        tail = ended(self._plan, self._reader)
        if tail:
            yield tail

    def close(self) -> None:
        try:
            self._inner.close()
        finally:
            self._plan.settle(self._reader)  # no-op when the body was read to its end

    def __del__(self) -> None:
        # Dropped neither read to its end nor closed: settled soon after (see `_DROPPED`).
        _dropped(self._plan, self._reader, self._sinks)


class _AsyncObservedStream(httpx2.AsyncByteStream):
    def __init__(self, inner: Any, plan: CallPlan, reader: UsageReader) -> None:
        self._inner, self._plan, self._reader = inner, plan, reader
        self._sinks = current_sinks()

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._inner:
            kept = passed(self._plan, self._reader, chunk)
            if kept:
                yield kept
        tail = ended(self._plan, self._reader)
        if tail:
            yield tail

    async def aclose(self) -> None:
        try:
            await self._inner.aclose()
        finally:
            self._plan.settle(self._reader)

    def __del__(self) -> None:
        _dropped(self._plan, self._reader, self._sinks)


def _observed(response: httpx2.Response, plan: CallPlan) -> httpx2.Response:
    """The same response (a new Response would cost more than the rest of the wrapper's work on
    the way back): a stream read through `_ObservedStream` as it passes, a whole reply read
    here and settled, or, when the plan reads nothing, settled now and left as it came."""
    if not plan.reads_reply:
        plan.settle_unread()
    elif plan.streaming and plan.streams_reply(response.headers.get("content-type")):
        response.stream = _ObservedStream(response.stream, plan, plan.reader())
    else:
        try:
            body = response.read()
        except BaseException as error:
            plan.cut_off(error)
            raise
        plan.settle_whole(body)
    return response


async def _observed_async(response: httpx2.Response, plan: CallPlan) -> httpx2.Response:
    """`_observed` for asyncio clients."""
    if not plan.reads_reply:
        plan.settle_unread()
    elif plan.streaming and plan.streams_reply(response.headers.get("content-type")):
        response.stream = _AsyncObservedStream(response.stream, plan, plan.reader())
    else:
        try:
            body = await response.aread()
        except BaseException as error:
            plan.cut_off(error)
            raise
        plan.settle_whole(body)
    return response


class ThrottledTransport(httpx2.BaseTransport):
    """Wraps the SDK's transport (`inner`) for blocking clients."""

    def __init__(self, inner: httpx2.BaseTransport, settings: Settings) -> None:
        self.inner = inner
        self.settings = settings
        _start_settler()

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        if _DROPPED:
            settle_dropped()
        try:
            content = request.read()
            url = request.url
            plan = CallPlan.start(
                self.settings, request.method, url.host, url.path, request.headers, content, port=url.port
            )
            if plan is None:
                return self.inner.handle_request(request)
            if plan.cache_key is not None and (hit := plan.cached_reply()) is not None:
                return _cached_response(hit, request)
            if plan.content is not content or _reads_stream(plan):
                request = _rebuilt(request, plan, content)
            guard = self.settings.guard
            try:
                while True:
                    while (paused := plan.pause_wait_s()) > 0:
                        self._wait(plan, paused)
                    if (taught := plan.first_reply()) is not None:  # the limits are being learned
                        started = time.monotonic()
                        taught.wait(plan.first_reply_s())
                        plan.waited_s += time.monotonic() - started
                        continue
                    if guard is not None:
                        if plan.call is None:
                            plan.call = guard.call(plan.keys(), **plan.admit_arguments())
                        elif plan.attempts > 0:
                            plan.call.retry(timeout=plan.remaining_s())
                    learned = plan.learned_admission()
                    if learned is not None:  # no room at once: wait for room, within the deadline
                        plan.learned_reservation = learned[0].acquire(
                            plan.pause_key, timeout=plan.admission_timeout(), queue=plan.waits_in_line, **learned[1]
                        )
                    plan.sending()
                    try:
                        response = self.inner.handle_request(request)
                    except httpx2.TransportError as error:
                        wait = plan.transport_error_wait()
                        if wait is None:
                            plan.fail("error", error=type(error).__name__)
                            raise
                        self._wait(plan, wait)
                        continue
                    plan.observe(response.status_code, response.headers)
                    if response.status_code < 400:
                        return _observed(response, plan)
                    body = response.read()
                    response.close()
                    wait = plan.next_wait(response.status_code, response.headers, body)
                    if wait is None:
                        plan.fail(plan.given_up_outcome(), status=response.status_code)
                        return _error_response(response, body)
                    self._wait(plan, wait)
            except BaseException as error:
                plan.interrupted(error)
                raise
        except LlmthrottleError as error:
            raise_through(error, self.settings.sdk_error)

    @staticmethod
    def _wait(plan: CallPlan, seconds: float) -> None:
        plan.waited_s += seconds
        time.sleep(seconds)

    def close(self) -> None:
        self.inner.close()


def _status_of(response: httpx2.Response) -> tuple[int, httpx2.Headers]:
    return response.status_code, response.headers


async def _drained(response: httpx2.Response) -> bytes:
    body = await response.aread()
    await response.aclose()
    return body


class AsyncThrottledTransport(httpx2.AsyncBaseTransport):
    """Wraps the SDK's transport (`inner`) for asyncio clients."""

    def __init__(self, inner: httpx2.AsyncBaseTransport, settings: Settings) -> None:
        self.inner = inner
        self.settings = settings
        _start_settler()

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        if _DROPPED:
            settle_dropped()
        try:
            content = await request.aread()
            url = request.url
            plan = CallPlan.start(
                self.settings, request.method, url.host, url.path, request.headers, content, port=url.port
            )
            if plan is None:
                return await self.inner.handle_async_request(request)
            if plan.cache_key is not None and (hit := plan.cached_reply()) is not None:
                return _cached_response(hit, request)
            if plan.content is not content or _reads_stream(plan):
                request = _rebuilt(request, plan, content)
            first: httpx2.Response | httpx2.TransportError | None = None
            try:
                at_once = plan.admitted_at_once()
            except BaseException as error:  # a call too large for the learned limits
                plan.interrupted(error)
                raise
            if at_once:
                # Most calls: sent from this frame, without the loop's coroutine around the wait.
                try:
                    first = await self.inner.handle_async_request(request)
                except httpx2.TransportError as error:
                    first = error
                except BaseException as error:
                    plan.interrupted(error)
                    raise
                else:
                    plan.observe(first.status_code, first.headers)
                    if first.status_code < 400:
                        return await _observed_async(first, plan)
            response, body = await attempts_async(
                plan,
                functools.partial(self.inner.handle_async_request, request),
                _status_of,
                _drained,
                (httpx2.TransportError,),
                first,
            )
            if body is None:
                return await _observed_async(response, plan)
            return _error_response(response, body)
        except LlmthrottleError as error:
            raise_through(error, self.settings.sdk_error)

    async def aclose(self) -> None:
        await self.inner.aclose()


_Answer = TypeVar("_Answer")


async def attempts_async(
    plan: CallPlan,
    send: Callable[[], Awaitable[_Answer]],
    status_of: Callable[[_Answer], tuple[int, Any]],
    drain: Callable[[_Answer], Awaitable[bytes]],
    transport_errors: tuple[type[BaseException], ...],
    first: _Answer | BaseException | None = None,
) -> tuple[_Answer, bytes | None]:
    """The one retry loop for asyncio, whatever moves the bytes (the SDK's httpx transport, the
    gateway's aiohttp client): each attempt waits out any provider pause, is admitted by the
    guard and the learned limits, sent, and read. Returns `(answer, None)` for an answer below
    400, to be streamed through `plan.reader()`, or `(answer, body)` for the final error answer,
    already drained. Raises what admission raises (RateLimited, BudgetExceeded) and the last
    transport error when no retry is left.

    `first` is how an attempt the caller admitted and sent itself ended (`plan.admitted_at_once`):
    its error answer, already observed, or its transport error. The loop takes over from it."""
    guard = plan.settings.guard
    outcome = first
    try:
        while True:
            if outcome is None:
                while (paused := plan.pause_wait_s()) > 0:
                    await _wait_async(plan, paused)
                if (taught := plan.first_reply()) is not None:  # the limits are being learned
                    while not taught.is_set() and (left := plan.first_reply_s()) > 0:
                        await _wait_async(plan, min(left, _FIRST_REPLY_POLL_S))
                    continue
                if guard is not None:
                    if plan.call is None:
                        plan.call = await guard.call_async(plan.keys(), **plan.admit_arguments())
                    elif plan.attempts > 0:
                        await plan.call.retry_async(timeout=plan.remaining_s())
                learned = plan.learned_admission()
                if learned is not None:  # no room at once: wait for room, within the deadline
                    plan.learned_reservation = await learned[0].acquire_async(
                        plan.pause_key, timeout=plan.admission_timeout(), queue=plan.waits_in_line, **learned[1]
                    )
                plan.sending()
                try:
                    answer = await send()
                except transport_errors as error:
                    outcome = error
                else:
                    status, headers = status_of(answer)
                    plan.observe(status, headers)
                    if status < 400:
                        return answer, None
                    outcome = answer
            if isinstance(outcome, BaseException):
                wait = plan.transport_error_wait()
                if wait is None:
                    plan.fail("error", error=type(outcome).__name__)
                    raise outcome
                outcome = None
                await _wait_async(plan, wait)
                continue
            answer, outcome = outcome, None
            status, headers = status_of(answer)
            body = await drain(answer)
            wait = plan.next_wait(status, headers, body)
            if wait is None:
                plan.fail(plan.given_up_outcome(), status=status)
                return answer, body
            await _wait_async(plan, wait)
    except BaseException as error:
        plan.interrupted(error)
        raise


async def _wait_async(plan: CallPlan, seconds: float) -> None:
    plan.waited_s += seconds
    await asyncio.sleep(seconds)
