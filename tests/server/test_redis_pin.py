"""The Redis door against writers it must not trust: a door that reads a tag serves the
pin byte for byte whatever anyone writes (docs/server.md, "Reads"), and one bad SET
never sinks the good entries of its batch ("Writes")."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from cas import manifest
from cas.digest import ObjectId
from cas.refs import create_tag, load_commit, resolve, set_branch
from cas.store import Store
from server.rediskit import FX_KEY, Door, start, wait_until, wire

NEW_KEY = "pt2:fx-graph-v1::newkey:c1"


def _tip(path: Path, branch: str) -> ObjectId | None:
    with Store(path) as s:
        return s.refs.get(f"refs/heads/{branch}")


def _wait_commit(path: Path, branch: str, old: ObjectId | None) -> dict[str, bytes]:
    """The keys and blobs of ``branch`` once it moved past ``old``: the door's batch
    commit is the barrier, never a sleep."""
    tip = wait_until(lambda: (t if (t := _tip(path, branch)) is not None and t != old else None),
                     f"committed to {branch}")
    with Store(path) as s:
        pairs = manifest.entries(s, load_commit(s, tip).manifest)
        return {k.key: s.objects.get(e.blob) or b"" for k, e in pairs}


def _pin(tmp_path: Path, *args: str) -> Door:
    """A door reading the annotated tag release/1.4 (main's seeded commit)."""
    d = start(tmp_path, "--redis-ref", "release/1.4", *args)
    with Store(d.store) as s:
        create_tag(s, "release/1.4", resolve(s, "main"), message="release 1.4")
    return d


@pytest.fixture
def pinned(tmp_path: Path) -> Iterator[Door]:
    with _pin(tmp_path) as d:
        yield d


def test_a_door_reading_a_tag_serves_the_pin_byte_for_byte_whatever_is_written(pinned: Door) -> None:
    reader = pinned.client(pinned.read)
    pin = reader.get(FX_KEY)
    assert pin is not None and base64.b64decode(json.loads(pin)["data"]) == b"graph for A"
    before = _tip(pinned.store, "main")
    writer = pinned.client(pinned.write)
    writer.set(FX_KEY, wire(b"a write to main, not the pin"))
    writer.set(NEW_KEY, wire(b"new on main"))
    # Pending (not yet committed) writes to main: never served to readers of the tag.
    assert reader.get(FX_KEY) == pin
    assert writer.get(FX_KEY) == pin
    assert reader.mget([FX_KEY, NEW_KEY]) == [pin, None]
    committed = _wait_commit(pinned.store, "main", before)
    assert committed["newkey"] == b"new on main"  # the write was kept, on main
    # Committed to main: still not served from the tag.
    assert pinned.client(pinned.read).mget([FX_KEY, NEW_KEY]) == [pin, None]
    assert reader.exists(NEW_KEY) == 0


def test_a_tag_reading_door_starts_a_new_write_branch_at_the_pinned_commit(tmp_path: Path) -> None:
    with _pin(tmp_path, "--redis-branch", "incoming") as d:
        with Store(d.store) as s:
            pinned = resolve(s, "release/1.4")
        assert d.client(d.read).get(FX_KEY) is not None  # the door has read the annotated tag
        d.client(d.write).set(NEW_KEY, wire(b"new"))
        # The branch is made at the pin, then moved by the commit: wait past the pin.
        committed = _wait_commit(d.store, "incoming", pinned)
        assert committed["newkey"] == b"new" and "fgraphkey" in committed
        with Store(d.store) as s:
            assert load_commit(s, resolve(s, "incoming")).parents == (pinned,)


def test_a_door_reading_another_branch_serves_neither_pending_nor_committed_writes(tmp_path: Path) -> None:
    with start(tmp_path, "--redis-ref", "dev") as d:
        with Store(d.store) as s:
            set_branch(s, "dev", resolve(s, "main"))
        before = _tip(d.store, "main")
        d.client(d.write).set(NEW_KEY, wire(b"for main"))
        reader = d.client(d.read)
        assert reader.get(NEW_KEY) is None
        assert _wait_commit(d.store, "main", before)["newkey"] == b"for main"
        assert reader.get(NEW_KEY) is None


def test_a_door_reading_its_own_branch_serves_its_pending_writes_then_the_commit(tmp_path: Path) -> None:
    with start(tmp_path) as d:
        before = _tip(d.store, "main")
        d.client(d.write).set(NEW_KEY, wire(b"mine"))
        reader = d.client(d.read)
        assert base64.b64decode(json.loads(reader.get(NEW_KEY))["data"]) == b"mine"
        _wait_commit(d.store, "main", before)
        assert base64.b64decode(json.loads(reader.get(NEW_KEY))["data"]) == b"mine"


@pytest.mark.parametrize("anonymous", [False, True])
def test_a_bad_key_is_refused_at_set_and_the_good_keys_of_the_batch_are_committed(
    tmp_path: Path, anonymous: bool
) -> None:
    with start(tmp_path, *(["--redis-anonymous-write"] if anonymous else [])) as d:
        before = _tip(d.store, "main")
        w = d.client(None if anonymous else d.write)
        w.set("pt2:fx-graph-v1::good1:c1", wire(b"one"))
        for bad in ("pt2:fx-graph-v1::../../.bashrc:c1", "pt2:autograd-experimental::a/b:c1"):
            with pytest.raises(redis.exceptions.ResponseError, match="does not match the .* key grammar"):
                w.set(bad, wire(b"evil"))
            assert w.get(bad) is None  # nothing stored
        with pytest.raises(redis.exceptions.ResponseError, match="grammar"):
            w.mset({"pt2:fx-graph-v1::good2:c1": wire(b"two"), "pt2:fx-graph-v1::/etc/x:c1": wire(b"evil")})
        w.set("pt2:fx-graph-v1::good3:c1", wire(b"three"))
        committed = _wait_commit(d.store, "main", before)
    assert {"good1": b"one", "good3": b"three"}.items() <= committed.items()
    assert not {"../../.bashrc", "a/b", "/etc/x", "good2"} & committed.keys()  # MSET: all or nothing


def test_an_entry_that_fails_at_commit_is_dropped_counted_and_logged_and_the_rest_commits(tmp_path: Path) -> None:
    with start(tmp_path) as d:
        before = _tip(d.store, "main")
        w = d.client(d.write)
        w.set("pt2:fx-graph-v1::good1:c1", wire(b"one"))
        # Values are decoded in the commit thread: each of these is answered OK at SET.
        w.set("pt2:fx-graph-v1::huge:c1", wire(b"x", 10**30))  # metadata past 64 bits
        w.set("pt2:fx-graph-v1::notjson:c1", b"{not json")
        w.set("pt2:fx-graph-v1::good2:c1", wire(b"two"))
        committed = _wait_commit(d.store, "main", before)
        assert {"good1": b"one", "good2": b"two"}.items() <= committed.items()
        assert not {"huge", "notjson"} & committed.keys()
        metrics = httpx.get(f"{d.server.url}/metrics", headers={"Authorization": f"Bearer {d.read}"}).text
        assert 'cas_redis_dropped_entries_total{reason="value"} 2.0' in metrics
        log = d.server.log.read_text()
    assert "redis door dropped 'pt2:fx-graph-v1::huge:c1' (token w)" in log
    assert "redis door dropped 'pt2:fx-graph-v1::notjson:c1' (token w)" in log
