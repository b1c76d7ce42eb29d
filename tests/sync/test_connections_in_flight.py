"""A clone keeps a bounded number of connections to a `cas serve`: at most
cas.remote.http.CONNECTIONS, however many blob batches it fetches, so N machines behind
one address fit a per-peer cap of that many times N (docs/server.md, "A fleet of
machines")."""

from __future__ import annotations

from pathlib import Path

import pytest
from servers import Served

from cas.fsck import fsck
from cas.remote import http
from cas.remote.http import HttpRemote
from cas.sync import transfer, walk

from .helpers import add, entries_of, new_store


def test_a_clone_of_many_batches_fits_a_per_peer_cap_of_its_connections(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(walk, "FETCH_BYTES", 64 << 10)  # 2 MiB of blobs: ~32 batches
    tips = []
    served = Served(
        tmp_path / "srv",
        "--max-connections-per-peer", str(http.CONNECTIONS),
        prepare=lambda st: tips.append(add(st, "k", n=64, size=32 << 10, random_bytes=True)),
    )
    try:
        dst = new_store(tmp_path / "dst")
        remote = HttpRemote(served.url, token=served.read_token)
        try:
            transfer.clone(dst, remote)
        finally:
            remote.close()
        assert dst.refs.get("refs/heads/main") == tips[0]
        assert len(entries_of(dst, "main")) == 64
        assert fsck(dst).ok
        dst.close()
    finally:
        served.stop()
