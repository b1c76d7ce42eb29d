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

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.routing import Match

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

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def request(self, door: str, route: str, status: str, failed: bool, n_in: int, n_out: int, secs: float) -> None:
        key = (door, route, status)
        children = self._children.get(key)
        if children is None:
            # ``labels()`` takes a lock and hashes the label tuple; the Redis door calls
            # this once per command, so each label set's children are looked up once.
            children = self._children[key] = (
                self.requests.labels(door, route, status), self.errors.labels(door, route),
                self.seconds.labels(door, route), self.received.labels(door), self.sent.labels(door),
            )
        requests, errors, seconds, received, sent = children
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

        def observe(command: str, kind: str, outcome: str, n_in: int, n_out: int, secs: float) -> None:
            failed = outcome == "error"
            self.request("redis", command, "error" if failed else "ok", failed, n_in, n_out, secs)
            if outcome in ("hit", "miss"):
                self.lookup("redis", kind or "unknown", env, outcome == "hit", outcome == "miss")

        return observe

    def redis_dropped(self, reason: str) -> None:
        """A write the Redis door accepted could not be stored (``reason``: key or value)."""
        self.dropped.labels(reason).inc()

    def hit_rates(self) -> dict[tuple[str, str, str], tuple[int, int]]:
        """{(door, kind, env): (hits, misses)} so far, for the web view."""
        out: dict[tuple[str, str, str], list[int]] = {}
        for family in self.lookups.collect():
            for s in family.samples:
                if not s.name.endswith("_total"):
                    continue
                key = (s.labels["door"], s.labels["kind"], s.labels["env"])
                slot = out.setdefault(key, [0, 0])
                slot[0 if s.labels["result"] == "hit" else 1] += int(s.value)
        return {k: (v[0], v[1]) for k, v in sorted(out.items())}


def route_of(routes: list[Any], scope: Scope_) -> str:
    """The route pattern a request matched (its label in the HTTP metrics), or "other"."""
    for route in routes:
        match, _ = route.matches(scope)
        if match is Match.FULL:
            return str(route.path)
    return "other"
