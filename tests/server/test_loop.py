"""The event loop `cas serve` runs both doors on (``--loop``): uvloop by default, where it
is a dependency; asyncio on request. The rest of the suite's servers run the default, so
these are what holds asyncio's loop to the same answers."""

from __future__ import annotations

import base64
import json
import sys
from pathlib import Path

import httpx
import pytest

from cas.errors import UsageError
from cas.server.run import event_loop
from server.rediskit import FX_KEY, start, wait_until, wire


@pytest.mark.parametrize(("wanted", "runs"), [("auto", "uvloop"), ("asyncio", "asyncio")])
def test_both_doors_answer_on_the_loop_the_serving_line_names(tmp_path: Path, wanted: str, runs: str) -> None:
    with start(tmp_path, "--loop", wanted) as door:
        said = door.server.log.read_text()
        assert f"; {runs} loop)" in said, said
        # The loop the server runs on, as it reports it from inside that loop.
        assert httpx.get(door.server.url + "/v1/health").json()["event_loop"] == runs
        # The Redis door (on that loop): a read, a write, the write's commit to main, seen
        # through the HTTP door's refs.
        before = _main(door.server.url, door.read)
        c = door.client(door.write)
        assert _data(c.get(FX_KEY)) == b"graph for A"  # what rediskit.seed committed for env A
        c.set("pt2:fx-graph-v1::fnewkey:c1", wire(b"new graph"))
        assert _data(c.get("pt2:fx-graph-v1::fnewkey:c1")) == b"new graph"
        c.close()
        wait_until(lambda: _main(door.server.url, door.read) != before or None, "committed the SET")
        reader = door.client(door.read)
        assert _data(reader.get("pt2:fx-graph-v1::fnewkey:c1")) == b"new graph"
        reader.close()


def _main(url: str, token: str) -> str:
    got = httpx.get(url + "/v1/refs", headers={"Authorization": f"Bearer {token}"})
    assert got.status_code == 200, got.text
    return str(got.json()["refs/heads/main"])


def _data(value: object) -> bytes:
    """The pickle bytes of an FX value as torch reads it (``{"data": base64, ...}``)."""
    assert isinstance(value, bytes), value
    return base64.b64decode(json.loads(value)["data"])


def test_uvloop_asked_for_and_missing_is_one_line_with_the_way_out(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # what a platform without it sees: ImportError
    with pytest.raises(UsageError, match="uvloop cannot be imported") as caught:
        event_loop("uvloop")
    assert caught.value.hint is not None and "--loop asyncio" in caught.value.hint
    assert event_loop("auto") == "asyncio"  # auto falls back instead
    with pytest.raises(UsageError, match="unknown event loop"):
        event_loop("trio")
