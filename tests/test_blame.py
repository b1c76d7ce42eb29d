"""`cas blame KEY` / `cas log --entry KEY` (cas.blame): every commit that added, changed,
removed or revoked an entry, newest first, with producer, machine, token and timings,
across every branch and tag; an unknown key is one line and exit 3."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cas import history, revocations
from cas.objects import Entry, EntryKey, Env
from cas.store import Store

ENV = Env({"device": "cpu-test", "torch_version": "2.13.0"})
KEY = "fblamedgraph00000000000000000000000000000000000000"


def _put(s: Store, data: bytes, ms: int) -> Entry:
    return Entry(s.objects.put(data), len(data), None, {"time_taken_ms": ms})


def _history(path: Path) -> None:
    """capture adds KEY on main; the Redis door changes it; a branch removes it; a revoke."""
    with Store.init(path) as s:
        ek = EntryKey(s.objects.put_object(ENV), "inductor", KEY)
        other = EntryKey(ek.env, "inductor", "fotherkey")
        history.commit_changes(s, "main", {ek: _put(s, b"v1", 900), other: _put(s, b"o", 1)}, "capture",
                               {"producer": "capture", "host": "ci-gpu-7", "compile_seconds": 3})
        history.commit_changes(s, "main", {other: _put(s, b"o2", 2)}, "unrelated", {"producer": "capture"})
        history.commit_changes(s, "main", {ek: _put(s, b"v2", 450)}, "door batch",
                               {"producer": "redis", "token": "ci-writer"})
        s.refs.set("refs/heads/slim", s.refs.get("refs/heads/main"), expected=None)
        history.commit_changes(s, "slim", {ek: None}, "slim it", {"producer": "edit", "host": "laptop"})
        revocations.revoke(s, revocations.find_targets(s, KEY, ["main"]), "nan in the output")


def test_blame_lists_every_change_and_the_revocation_newest_first(cas: Any) -> None:
    _history(cas.store)
    rows = json.loads(cas("--json", "blame", KEY).stdout)
    assert [r["action"] for r in rows] == ["revoked", "removed", "changed", "added"]
    revoked, removed, changed, added = rows
    assert revoked["message"] == "nan in the output" and revoked["ignored"] is None
    assert revoked["blob"] == changed["blob"] != added["blob"]
    assert removed["machine"] == "laptop" and removed["producer"] == "edit"
    assert changed["producer"] == "redis" and changed["token"] == "ci-writer"
    assert changed["timings"] == {"time_taken_ms": 450}
    assert added["machine"] == "ci-gpu-7" and added["timings"]["time_taken_ms"] == 900
    text = cas("blame", KEY).stdout.splitlines()
    assert len(text) == 4 and "token ci-writer" in text[2] and "time_taken_ms=900" in text[3]
    # `cas log --entry` is the same walk from one ref: main never removed it
    on_main = json.loads(cas("--json", "log", "--entry", KEY[:10], "main").stdout)
    assert [r["action"] for r in on_main] == ["revoked", "changed", "added"]


def test_blame_of_an_unknown_key_is_one_line(cas: Any) -> None:
    _history(cas.store)
    proc = cas("blame", "fnosuchkey", ok=False)
    assert proc.returncode == 3 and "no commit of any branch or tag holds key 'fnosuchkey'" in proc.stderr
    assert "Traceback" not in proc.stderr
