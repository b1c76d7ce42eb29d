"""Validation and display agree: what a store may hold, `cas log`, `cas show`, `cas ls`,
`cas diff` and every /ui page of a real `cas serve` can show; what they could not show
is refused at ingest (tests/remote/contract.py, tests/server/test_validation.py) and,
found in a store of an older cas, shown as a number rather than crashing the reader."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from servers import CasServer

from cas import manifest
from cas.codec import ObjType, encode
from cas.digest import ObjectId
from cas.fsck import CORRUPT, fsck
from cas.objects import Commit, Entry, EntryKey, Env
from cas.refs import create_tag
from cas.store import Store
from cas.validate import MAX_TIME, MIN_TIME

MARKUP = "[/] [bold]<b>&amp;"  # rich markup and HTML, which every reader must show as text
META: dict[str, Any] = {"producer": MARKUP, "token": MARKUP, "bytes": b"\xff\x00", "deep": [[[{}]]],
                        "big": 2**64 - 1, "small": -(2**63), "huge": -1.7e308, "none": None}


def _extreme(path: Path) -> dict[str, str]:
    """A store of objects at the edges of what validation allows, and their ids."""
    with Store.init(path) as s:
        env = s.objects.put_object(Env({"device": MARKUP, "threads": 2**63 - 1, "ratio": 1e308,  # type: ignore[dict-item]
                                "flag": True, "none": None}))
        blob = s.objects.put(b"artifact bytes")
        entries = {
            EntryKey(env, "inductor", "fkey1"): Entry(blob, 2**64 - 1, MARKUP, {
                "time_taken_ms": 2**63 - 1, "compile_ms": 0, "note": MARKUP, "nested": META}),
            EntryKey(env, "x[/]kind", MARKUP, MARKUP): Entry(blob, 0, None, {"time_taken_ms": 2**63 - 1}),
        }
        first = s.objects.put_object(Commit(manifest.build(s, {}), (), MARKUP, MIN_TIME, MARKUP, META))
        tip = s.objects.put_object(Commit(manifest.build(s, entries), (first,), MARKUP, MAX_TIME,
                                  f"{MARKUP}\n\nsecond line {MARKUP}", META))
        s.refs.set("refs/heads/main", tip)
        tag = create_tag(s, "release/edge", tip, message=MARKUP)
        report = fsck(s)
        assert report.ok, [str(f) for f in report.errors]  # all of it is valid
        return {"env": env.hex, "first": first.hex, "tip": tip.hex, "tag": tag.hex}


def test_the_cli_shows_a_store_at_the_edges(cas: Any, store_path: Path) -> None:
    ids = _extreme(store_path)
    log = cas("log").stdout
    assert "Date:   9999-12-31 23:59:59 UTC" in log and "Date:   0001-01-01 00:00:00 UTC" in log
    assert f"Author: {MARKUP}" in log and f"    second line {MARKUP}" in log
    assert MARKUP in cas("log", "--oneline").stdout
    assert [c["time"] for c in json.loads(cas("--json", "log").stdout)] == [MAX_TIME, MIN_TIME]
    shown = cas("show", "main").stdout
    assert f"meta   producer: {MARKUP}" in shown and "date   9999-12-31 23:59:59 UTC" in shown
    assert json.loads(cas("--json", "show", "main").stdout)["metadata"]["big"] == 2**64 - 1
    assert MARKUP in cas("show", ids["tag"]).stdout
    assert MARKUP in cas("show", ids["env"]).stdout
    assert MARKUP in cas("show", ids["first"]).stdout
    assert "x[/]kind" in cas("ls", "main").stdout
    assert "x[/]kind" in cas("diff", ids["first"], "main").stdout
    assert "x[/]kind" in cas("diff", "--stat", ids["first"], "main").stdout


@pytest.fixture
def served_edges(tmp_path: Path) -> Iterator[tuple[str, dict[str, str]]]:
    ids = _extreme(tmp_path / "store")
    server = CasServer(tmp_path / "store", tmp_path, "--no-auth")
    try:
        yield server.url, ids
    finally:
        server.stop()


def test_every_ui_page_shows_a_store_at_the_edges(served_edges: tuple[str, dict[str, str]]) -> None:
    url, ids = served_edges
    shown = "[/] [bold]&lt;b&gt;&amp;amp;"  # MARKUP, escaped once
    pages = {"/ui/": "release/edge", "/ui/log/main": shown, "/ui/log/release/edge": shown,
             f"/ui/commit/{ids['tip']}": shown, f"/ui/commit/{ids['first']}": shown,
             f"/ui/commit/{ids['tag']}": shown, "/ui/entries/main": shown, "/ui/entries/release/edge": shown,
             f"/ui/explain?ref=main&key=fkey1&env={ids['env']}": "fkey1"}
    for page, text in pages.items():
        got = httpx.get(url + page, timeout=30)
        assert got.status_code == 200, (page, got.status_code, got.text[-500:])
        assert text in got.text, page
    assert "9999-12-31 23:59" in httpx.get(url + "/ui/log/main").text
    assert "0001-01-01 00:00" in httpx.get(url + f"/ui/commit/{ids['first']}").text


def test_a_time_no_date_can_show_is_shown_as_a_number_and_found_by_fsck(
    cas: Any, store_path: Path, tmp_path: Path
) -> None:
    """A store of an older cas may hold a commit from before the rule: readers show its
    time as a number, and fsck names it."""
    with Store.init(store_path) as s:
        body = {"manifest": manifest.build(s, {}).raw, "parents": [], "author": "a", "time": 2**63 - 1,
                "message": "from the far future", "metadata": {}}
        far = s.objects.put(encode(ObjType.COMMIT, body), ObjType.COMMIT)
        s.refs.set("refs/heads/main", far)
    assert f"Date:   @{2**63 - 1} UTC" in cas("log").stdout
    assert f"date   @{2**63 - 1} UTC" in cas("show", "main").stdout
    with Store(store_path) as s:
        assert [f.oid for f in fsck(s).errors if f.kind == CORRUPT] == [ObjectId(far.raw)]
    server = CasServer(store_path, tmp_path, "--no-auth")
    try:
        for page in ("/ui/log/main", f"/ui/commit/{far.hex}"):
            got = httpx.get(server.url + page, timeout=30)
            assert got.status_code == 200 and f"@{2**63 - 1}" in got.text, page
    finally:
        server.stop()
