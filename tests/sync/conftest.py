"""Real servers for sync over HTTP and S3: `cas serve` and SeaweedFS on 127.0.0.1."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from servers import S3_KEY, S3_REGION, S3_SECRET, Seaweed, ServedPool

from cas.remote.base import Remote


class Endpoint:
    """One fresh remote on a real server: open connections to it, count its requests."""

    def __init__(self, kind: str, url: str, opener: Callable[[], Remote],
                 counter: Callable[[], int]) -> None:
        self.kind = kind
        self.url = url
        self._opener = opener
        self._counter = counter

    def open(self) -> Remote:
        return self._opener()

    def requests(self) -> int:
        """Requests the server has answered so far (counted on the wire, not by us)."""
        return self._counter()


def _http(pool: ServedPool) -> Iterator[Endpoint]:
    from cas.remote.http import HttpRemote

    served = pool.take()
    log = served.server.access_log

    def count() -> int:
        return len(log.read_text().splitlines()) if log.exists() else 0

    try:
        yield Endpoint("http", served.url, lambda: HttpRemote(served.url, token=served.write_token), count)
    finally:
        pool.give_back(served)


@pytest.fixture(scope="session")
def sync_bucket(seaweed: Seaweed) -> str:
    return seaweed.bucket("cas-sync")


def _s3(seaweed: Seaweed, bucket: str) -> Iterator[Endpoint]:
    from cas.remote.s3 import S3Remote

    url = f"s3://{bucket}/t-{uuid.uuid4().hex[:12]}"
    sent = [0]

    def opener() -> Remote:
        r = S3Remote(url, endpoint=seaweed.endpoint, region=S3_REGION, access_key=S3_KEY,
                     secret_key=S3_SECRET)
        # botocore's own hook sees every HTTP request the client makes, retries included.
        r._s3.meta.events.register("before-send", lambda **kw: sent.__setitem__(0, sent[0] + 1))
        return r

    yield Endpoint("s3", url, opener, lambda: sent[0])


@pytest.fixture(params=["http", "s3"])
def endpoint(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Endpoint]:
    if request.param == "http":
        yield from _http(request.getfixturevalue("served_pool"))
    else:
        yield from _s3(request.getfixturevalue("seaweed"), request.getfixturevalue("sync_bucket"))
