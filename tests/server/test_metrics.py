"""/metrics as Prometheus scrapes it: both doors' requests, errors, bytes, latency, hits
and misses by kind and env, and the store's size."""

from __future__ import annotations

from pathlib import Path

import httpx
import redis
from prometheus_client.parser import text_string_to_metric_families

from server.rediskit import ENV_A, FX_KEY, start


def scrape(url: str, token: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    got = httpx.get(url + "/metrics", headers={"Authorization": f"Bearer {token}"})
    assert got.status_code == 200
    assert got.headers["content-type"].startswith("text/plain")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(got.text)
        for s in family.samples
    }


def test_metrics_count_both_doors(tmp_path: Path) -> None:
    door = start(tmp_path)
    url = door.server.url
    try:
        assert httpx.get(url + "/metrics").status_code == 401
        auth = {"Authorization": f"Bearer {door.read}"}
        assert httpx.get(url + "/v1/refs", headers=auth).status_code == 200
        assert httpx.get(url + "/v1/refs").status_code == 401
        assert httpx.get(url + "/no/such/path").status_code == 404
        c = redis.Redis(port=door.port, password=door.read)
        assert c.get(FX_KEY) is not None
        assert c.get(FX_KEY) is not None
        assert c.get("pt2:autograd-experimental::nope:c1") is None
        try:
            c.set(FX_KEY, b"{}")
        except redis.exceptions.NoPermissionError:
            pass
        m = scrape(url, door.read)
    finally:
        door.server.stop()

    env = ENV_A.id.short()
    assert m[("cas_requests_total", (("door", "http"), ("route", "/v1/refs"), ("status", "200")))] == 1
    assert m[("cas_requests_total", (("door", "http"), ("route", "/v1/refs"), ("status", "401")))] == 1
    assert m[("cas_request_errors_total", (("door", "http"), ("route", "other")))] == 1
    assert m[("cas_lookups_total", (("door", "redis"), ("env", env), ("kind", "inductor"), ("result", "hit")))] == 2
    assert m[("cas_lookups_total", (("door", "redis"), ("env", env), ("kind", "aot_autograd"), ("result", "miss")))] == 1
    assert m[("cas_request_errors_total", (("door", "redis"), ("route", "SET")))] == 1
    assert m[("cas_request_seconds_count", (("door", "redis"), ("route", "GET")))] == 3
    assert m[("cas_sent_bytes_total", (("door", "redis"),))] > 0
    assert m[("cas_received_bytes_total", (("door", "redis"),))] > 0
    assert m[("cas_store_objects", ())] >= 5
    assert m[("cas_store_used_bytes", ())] > 0
