"""Prometheus metrics of ``cas serve`` (both doors), served at ``/metrics``.

Names and labels (docs/server.md has the scrape set-up):

===============================  =========================  ==================================
metric                           labels                     what
===============================  =========================  ==================================
cas_requests_total               door, route, status        HTTP requests / Redis commands
cas_request_errors_total         door, route                HTTP status >= 400, Redis errors
cas_request_seconds (histogram)  door, route                time to answer
cas_received_bytes_total         door                       request bytes read
cas_sent_bytes_total             door                       answer bytes written
cas_lookups_total                door, kind, env, result    hits and misses (result=hit|miss)
cas_redis_dropped_entries_total  reason                     Redis writes dropped at commit
cas_redis_held_bytes             -                          Redis write values held (on scrape)
cas_redis_write_waits_total      -                          Redis writers stopped to wait for room
cas_store_used_bytes             -                          LMDB pages in use (read on scrape)
cas_store_objects                -                          objects in the store
cas_refs                         -                          refs in the store
===============================  =========================  ==================================

``route`` is the route's path template for HTTP (``/v1/refs/{name:path}``; ``other``
for a path no route matches, so a scanner cannot blow up the label set) and the command
name for Redis. Lookups: the Redis door counts GETs by entry kind and the env it serves;
the HTTP door counts the ids ``/v1/missing`` is asked about (kind ``object``, env ``any``:
a sync asks for objects, not for entries).

Each app owns its own registry (not prometheus-client's global one), so two servers in one
process, as in tests, do not share counters.
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.routing import Match

from cas.server.redis_budget import WriteBudget

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

Scope_ = dict[str, Any]


class _StoreCollector(Collector):
    """Store size, read from LMDB's own counters when Prometheus scrapes (no payload read)."""

    def __init__(self, info: Callable[[], dict[str, int]]) -> None:
        self.info = info

    def collect(self) -> Iterator[GaugeMetricFamily]:
        info = self.info()
        yield GaugeMetricFamily("cas_store_used_bytes", "LMDB pages in use, in bytes", info["used_bytes"])
        yield GaugeMetricFamily("cas_store_objects", "Objects in the store", info["objects"])
        yield GaugeMetricFamily("cas_refs", "Refs in the store", info["refs"])


class _BudgetCollector(Collector):
    """The Redis door's write budget (cas.server.redis_budget), read when Prometheus scrapes."""

    def __init__(self, budget: WriteBudget) -> None:
        self.budget = budget

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        yield GaugeMetricFamily("cas_redis_held_bytes", "Redis write values being received or not yet committed",
                                self.budget.used)
        yield CounterMetricFamily("cas_redis_write_waits", "Times a Redis writer stopped being read to wait for room",
                                  self.budget.waits)


class Metrics:
    """The counters of one server."""

    def __init__(self, store_info: Callable[[], dict[str, int]]) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter(
            "cas_requests", "HTTP requests and Redis commands", ["door", "route", "status"], registry=r
        )
        self.errors = Counter(
            "cas_request_errors", "Requests answered with an error", ["door", "route"], registry=r
        )
        self.seconds = Histogram(
            "cas_request_seconds", "Time to answer", ["door", "route"], buckets=_BUCKETS, registry=r
        )
        self.received = Counter("cas_received_bytes", "Request bytes read", ["door"], registry=r)
        self.sent = Counter("cas_sent_bytes", "Answer bytes written", ["door"], registry=r)
        self.lookups = Counter(
            "cas_lookups", "Cache lookups by outcome", ["door", "kind", "env", "result"], registry=r
        )
        self.dropped = Counter(
            "cas_redis_dropped_entries", "Redis door writes dropped at commit (key or value)", ["reason"],
            registry=r,
        )
        r.register(_StoreCollector(store_info))
        self._children: dict[tuple[str, str, str], tuple[Any, ...]] = {}
        self._lookup_children: dict[tuple[str, str, str, str], Any] = {}
        self._tallies: list[RedisTally] = []
        self._flush_lock = threading.Lock()

    def render(self) -> bytes:
        self.flush()
        return generate_latest(self.registry)

    def flush(self) -> None:
        """Add what the Redis door counted since the last flush (RedisTally)."""
        with self._flush_lock:  # a scrape and the web view may flush at once
            for tally in self._tallies:
                tally.flush()

    def children(self, door: str, route: str, status: str) -> tuple[Any, ...]:
        """(requests, errors, seconds, received, sent) of one label set."""
        key = (door, route, status)
        children = self._children.get(key)
        if children is None:
            # ``labels()`` takes a lock and hashes the label tuple: each label set's
            # children are looked up once.
            children = self._children[key] = (
                self.requests.labels(door, route, status), self.errors.labels(door, route),
                self.seconds.labels(door, route), self.received.labels(door), self.sent.labels(door),
            )
        return children

    def request(self, door: str, route: str, status: str, failed: bool, n_in: int, n_out: int, secs: float) -> None:
        requests, errors, seconds, received, sent = self.children(door, route, status)
        requests.inc()
        if failed:
            errors.inc()
        seconds.observe(secs)
        received.inc(n_in)
        sent.inc(n_out)

    def lookup(self, door: str, kind: str, env: str, hits: int, misses: int) -> None:
        for result, n in (("hit", hits), ("miss", misses)):
            if n:
                key = (door, kind, env, result)
                child = self._lookup_children.get(key)
                if child is None:
                    child = self._lookup_children[key] = self.lookups.labels(*key)
                child.inc(n)

    def redis_observer(self, env: str) -> Callable[[str, str, str, int, int, float], None]:
        """The Redis door's per-command callback, labelled with the env it serves."""
        tally = RedisTally(self, env)
        self._tallies.append(tally)
        return tally.observe

    def watch_budget(self, budget: WriteBudget) -> None:
        """Report the Redis door's write budget: what it holds, how often writers waited."""
        self.registry.register(_BudgetCollector(budget))

    def redis_dropped(self, reason: str) -> None:
        """A write the Redis door accepted could not be stored (``reason``: key or value)."""
        self.dropped.labels(reason).inc()

    def hit_rates(self) -> dict[tuple[str, str, str], tuple[int, int]]:
        """{(door, kind, env): (hits, misses)} so far, for the web view."""
        self.flush()
        out: dict[tuple[str, str, str], list[int]] = {}
        for family in self.lookups.collect():
            for s in family.samples:
                if not s.name.endswith("_total"):
                    continue
                key = (s.labels["door"], s.labels["kind"], s.labels["env"])
                slot = out.setdefault(key, [0, 0])
                slot[0 if s.labels["result"] == "hit" else 1] += int(s.value)
        return {k: (v[0], v[1]) for k, v in sorted(out.items())}


#: A RedisTally slot: commands, bytes in, bytes out, seconds, then one count per bucket
#: of _BUCKETS and one for +Inf.
_N, _IN, _OUT, _SECS, _FIRST_BUCKET = range(5)


class RedisTally:
    """The Redis door's per-command counts, kept in plain Python and added to the
    Prometheus metrics when they are read (a scrape, the web view).

    A command then costs a dict lookup and a few additions on the event loop's thread,
    instead of six Prometheus updates that each take a lock and a histogram's search
    of its buckets in Python (about a fifth of the door's CPU for a small GET). The slots
    only grow: :meth:`flush` (in whatever thread reads the metrics) adds what each slot
    gained since the last flush, so a command counted during a flush is added by the next
    one, never lost.
    """

    def __init__(self, metrics: Metrics, env: str) -> None:
        self.metrics, self.env = metrics, env
        self._slots: dict[tuple[str, str, str], list[float]] = {}
        self._flushed: dict[tuple[str, str, str], list[float]] = {}

    def observe(self, command: str, kind: str, outcome: str, n_in: int, n_out: int, secs: float) -> None:
        slot = self._slots.get((command, kind, outcome))
        if slot is None:
            slot = self._slots[(command, kind, outcome)] = [0.0] * (_FIRST_BUCKET + len(_BUCKETS) + 1)
        slot[_N] += 1
        slot[_IN] += n_in
        slot[_OUT] += n_out
        slot[_SECS] += secs
        slot[_FIRST_BUCKET + bisect_left(_BUCKETS, secs)] += 1  # Prometheus: le, first bound >= secs

    def flush(self) -> None:
        m = self.metrics
        for key, slot in list(self._slots.items()):
            now = list(slot)  # one copy: the loop's thread may go on adding to slot
            done = self._flushed.get(key, [0.0] * len(now))
            delta = [a - b for a, b in zip(now, done, strict=True)]
            if not delta[_N]:
                continue
            self._flushed[key] = now
            command, kind, outcome = key
            failed = outcome == "error"
            requests, errors, seconds, received, sent = m.children("redis", command, "error" if failed else "ok")
            requests.inc(delta[_N])
            if failed:
                errors.inc(delta[_N])
            received.inc(delta[_IN])
            sent.inc(delta[_OUT])
            _observe_many(seconds, delta[_FIRST_BUCKET:], delta[_SECS])
            if outcome in ("hit", "miss"):
                n = int(delta[_N])
                m.lookup("redis", kind or "unknown", self.env, n if outcome == "hit" else 0,
                         n if outcome == "miss" else 0)


def _observe_many(histogram: Any, buckets: list[float], total: float) -> None:
    """Add counted observations to a histogram child: ``buckets[i]`` of them fell in its
    i-th bucket (the last: +Inf), ``total`` seconds in all. prometheus_client offers only
    one observation at a time, so this adds to the child's bucket and sum values as its
    ``observe`` does (pinned by constraints.txt; tests/server/test_metrics.py scrapes it)."""
    histogram._sum.inc(total)
    for value, count in zip(histogram._buckets, buckets, strict=True):
        if count:
            value.inc(count)


def route_of(routes: list[Any], scope: Scope_) -> str:
    """The route pattern a request matched (its label in the HTTP metrics), or "other"."""
    for route in routes:
        match, _ = route.matches(scope)
        if match is Match.FULL:
            return str(route.path)
    return "other"
