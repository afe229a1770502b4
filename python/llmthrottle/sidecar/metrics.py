"""The sidecar's metrics and their Prometheus text exposition (format 0.0.4, written by hand:
the hot path only bumps ints in dicts, and /metrics renders them when scraped)."""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable
from typing import Any

__all__ = ["Metrics", "Histogram"]

# Request latency buckets in seconds: the sidecar answers in tens of microseconds.
_LATENCY_BUCKETS_S = (
    0.00001,
    0.000025,
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.05,
    0.25,
    1.0,
)


class Histogram:
    """A cumulative-on-render histogram: `observe` is one bisect and two increments."""

    __slots__ = ("bounds", "counts", "total", "count")

    def __init__(self, bounds: tuple[float, ...] = _LATENCY_BUCKETS_S) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value
        self.count += 1


def _labels(pairs: Iterable[tuple[str, Any]]) -> str:
    body = ",".join(f'{name}="{_escape(str(value))}"' for name, value in pairs)
    return "{" + body + "}" if body else ""


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class Metrics:
    """Counters the server bumps; `render()` gives the Prometheus exposition."""

    def __init__(self) -> None:
        # (namespace, allowed) -> decisions
        self.decisions: dict[tuple[str, bool], int] = {}
        # (namespace, limited_by) -> denials
        self.denials: dict[tuple[str, str], int] = {}
        # (namespace, dimension) -> amount committed as used (as reserved, when not given)
        self.committed: dict[tuple[str, str], float] = {}
        # (namespace, "committed" | "cancelled" | "expired") -> reservations settled
        self.settled: dict[tuple[str, str], int] = {}
        self.spend_usd: dict[str, float] = {}
        # (protocol, op) -> latency histogram of handling one request inside the server
        self.latency: dict[tuple[str, str], Histogram] = {}
        # (protocol, kind) -> requests answered with an error
        self.errors: dict[tuple[str, str], int] = {}
        self.connections_opened = 0
        self.connections_open = 0
        self.connections_refused = 0
        self.bad_frames = 0
        self.reloads: dict[str, int] = {}
        self.held_reservations: Callable[[], int] = lambda: 0
        self.ledger_quarantined: Callable[[], int] = lambda: 0
        # A callable giving (namespace, budget, key, remaining_usd) for recently used budget keys.
        self.budget_remaining: Callable[[], Iterable[tuple[str, str, str, float]]] | None = None

    def decision(self, namespace: str, allowed: bool, limited_by: str | None) -> None:
        # On the hot path: two dict operations. Amounts are counted when committed (settle).
        key = (namespace, allowed)
        self.decisions[key] = self.decisions.get(key, 0) + 1
        if not allowed:
            k2 = (namespace, limited_by or "unknown")
            self.denials[k2] = self.denials.get(k2, 0) + 1

    def settle(self, namespace: str, outcome: str, usage: dict[str, Any]) -> None:
        key = (namespace, outcome)
        self.settled[key] = self.settled.get(key, 0) + 1
        # A guarded call commits its cost to both budget_usd and cost_usd: count it once.
        spend = usage.get("budget_usd", usage.get("cost_usd"))
        if isinstance(spend, (int, float)) and not isinstance(spend, bool):
            self.spend_usd[namespace] = self.spend_usd.get(namespace, 0.0) + spend
        committed = self.committed
        for dimension, amount in usage.items():
            if isinstance(amount, (int, float)) and not isinstance(amount, bool):
                k = (namespace, dimension)
                committed[k] = committed.get(k, 0) + amount

    def request(self, protocol: str, op: str, seconds: float) -> None:
        self.histogram(protocol, op).observe(seconds)

    def histogram(self, protocol: str, op: str) -> Histogram:
        """The latency histogram of (protocol, op), made on first use; a hot path may keep it
        and call `observe` itself."""
        key = (protocol, op)
        histogram = self.latency.get(key)
        if histogram is None:
            histogram = self.latency[key] = Histogram()
        return histogram

    def error(self, protocol: str, kind: str) -> None:
        key = (protocol, kind)
        self.errors[key] = self.errors.get(key, 0) + 1

    def render(self, may_see: Callable[[str], bool] | None = None) -> str:
        """The Prometheus text. Series labelled with a key are shown only for keys `may_see`
        allows (None: every key, for a peer the access rules do not restrict)."""
        out: list[str] = []

        def family(name: str, kind: str, help_text: str, samples: Iterable[tuple[str, Any]]) -> None:
            out.append(f"# HELP {name} {help_text}")
            out.append(f"# TYPE {name} {kind}")
            out.extend(f"{name}{labels} {_number(value)}" for labels, value in samples)

        family(
            "llmthrottle_decisions_total",
            "counter",
            "Acquire decisions by outcome.",
            (
                (_labels([("namespace", ns), ("outcome", "allowed" if a else "denied")]), v)
                for (ns, a), v in sorted(self.decisions.items())
            ),
        )
        family(
            "llmthrottle_denials_total",
            "counter",
            "Denied acquires by the limit that denied them.",
            ((_labels([("namespace", ns), ("limited_by", d)]), v) for (ns, d), v in sorted(self.denials.items())),
        )
        family(
            "llmthrottle_committed_total",
            "counter",
            "Amounts committed as used, by dimension.",
            ((_labels([("namespace", ns), ("dimension", d)]), v) for (ns, d), v in sorted(self.committed.items())),
        )
        family(
            "llmthrottle_tokens_total",
            "counter",
            "Tokens committed as used.",
            ((_labels([("namespace", ns)]), v) for (ns, d), v in sorted(self.committed.items()) if d == "tokens"),
        )
        family(
            "llmthrottle_spend_usd_total",
            "counter",
            "Dollars committed (budget_usd, else cost_usd).",
            ((_labels([("namespace", ns)]), v) for ns, v in sorted(self.spend_usd.items())),
        )
        family(
            "llmthrottle_reservations_settled_total",
            "counter",
            "Reservations settled, by outcome.",
            ((_labels([("namespace", ns), ("outcome", o)]), v) for (ns, o), v in sorted(self.settled.items())),
        )
        family(
            "llmthrottle_reservations_held",
            "gauge",
            "Reservations admitted and not yet settled.",
            [("", self.held_reservations())],
        )
        family(
            "llmthrottle_ledger_quarantined_total",
            "counter",
            "Ledger records put aside in quarantine.jsonl because the store refused them.",
            [("", self.ledger_quarantined())],
        )
        budgets = list(self.budget_remaining()) if self.budget_remaining is not None else []
        if may_see is not None:
            budgets = [entry for entry in budgets if may_see(entry[2])]
        family(
            "llmthrottle_budget_remaining_usd",
            "gauge",
            "Dollars left in each budget, per key.",
            ((_labels([("namespace", ns), ("budget", b), ("key", k)]), v) for ns, b, k, v in budgets),
        )
        family(
            "llmthrottle_request_errors_total",
            "counter",
            "Requests answered with an error, by kind.",
            ((_labels([("protocol", p), ("kind", k)]), v) for (p, k), v in sorted(self.errors.items())),
        )
        family(
            "llmthrottle_connections_opened_total", "counter", "Connections accepted.", [("", self.connections_opened)]
        )
        family("llmthrottle_connections_open", "gauge", "Connections open now.", [("", self.connections_open)])
        family(
            "llmthrottle_connections_refused_total",
            "counter",
            "Connections refused (max_connections).",
            [("", self.connections_refused)],
        )
        family(
            "llmthrottle_bad_frames_total",
            "counter",
            "Binary connections closed for a malformed frame.",
            [("", self.bad_frames)],
        )
        family(
            "llmthrottle_policy_reloads_total",
            "counter",
            "Policy reloads by result.",
            ((_labels([("result", r)]), v) for r, v in sorted(self.reloads.items())),
        )
        name = "llmthrottle_request_seconds"
        out.append(f"# HELP {name} Time to handle one request inside the server.")
        out.append(f"# TYPE {name} histogram")
        for (protocol, op), histogram in sorted(self.latency.items()):
            base = [("protocol", protocol), ("op", op)]
            cumulative = 0
            for bound, count in zip((*histogram.bounds, float("inf")), histogram.counts):
                cumulative += count
                le = "+Inf" if bound == float("inf") else repr(bound)
                out.append(f"{name}_bucket{_labels([*base, ('le', le)])} {cumulative}")
            out.append(f"{name}_sum{_labels(base)} {_number(histogram.total)}")
            out.append(f"{name}_count{_labels(base)} {histogram.count}")
        return "\n".join(out) + "\n"


def _number(value: Any) -> str:
    if isinstance(value, float):
        return repr(value) if value == value else "NaN"
    return str(value)
