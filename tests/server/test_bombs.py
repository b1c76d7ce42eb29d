"""Decompression bombs against a real `cas serve` and against a client fetching from a
hostile server: each is refused with a clear error, nothing is stored, and the peak
resident memory of the process under attack stays under the request limit + 128 MiB."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from bombs import FAKE, HEADROOM, LIMIT, GiB, bombs, peak_rss, raw_pack, rle_frame, zeros_id
from servers import Served

from cas.codec import ObjType
from cas.digest import ObjectId
from cas.store import Store

SHAPES = [name for name, _, _ in bombs()]


def post_pack(s: Served, data: bytes) -> httpx.Response:
    return httpx.post(
        f"{s.url}/v1/packs",
        content=data,
        headers={"Authorization": f"Bearer {s.write_token}"},
        timeout=120,
    )


@pytest.mark.parametrize("shape", SHAPES)
def test_server_refuses_bomb_in_bounded_memory(small: Served, shape: str) -> None:
    _, data, ids = next(b for b in bombs() if b[0] == shape)
    assert len(data) < LIMIT
    resp = post_pack(small, data)
    assert 400 <= resp.status_code < 500, resp.text
    body = resp.json()
    assert body["error"] in ("MalformedPack", "RequestTooLarge", "CorruptObject")
    assert "\n" not in body["message"]
    with Store(small.store_path) as store:
        assert store.objects.missing(ids) == ids
    assert peak_rss(small.server.proc.pid) < LIMIT + HEADROOM


def test_server_stores_honest_1gib_blob_without_holding_it(small: Served) -> None:
    """A legitimate highly compressible 1 GiB blob in a 32 KB pack is stored (chunked,
    streamed from its frame), still within the same memory bound."""
    oid = zeros_id(GiB)
    resp = post_pack(small, raw_pack([(oid, ObjType.BLOB, GiB, rle_frame(GiB, content_size=GiB))]))
    assert resp.status_code == 200, resp.text
    with Store(small.store_path) as store:
        assert store.objects.missing([oid]) == []
    assert peak_rss(small.server.proc.pid) < LIMIT + HEADROOM


# -- a client fetching from a hostile server ------------------------------------------------


class _Hostile(BaseHTTPRequestHandler):
    """Answers like `cas serve`, but every fetch gets the bomb in ``server.pack``."""

    def log_message(self, *args: object) -> None:
        pass

    def _send(self, body: bytes, ctype: str = "application/json") -> None:
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        if self.path.startswith("/v1/refs"):
            target: ObjectId = getattr(self.server, "target", FAKE)
            self._send(json.dumps({"refs/heads/main": target.hex}).encode())
        else:
            self._send(json.dumps({"status": "ok", "store_format": 1, "pack_version": 1, "auth": False}).encode())

    def do_POST(self) -> None:
        n = int(self.headers.get("Content-Length") or 0)
        asked = self.rfile.read(n)
        if self.path == "/v1/fetch":
            self._send(self.server.pack, "application/x-cas-pack")  # type: ignore[attr-defined]
        else:  # /v1/missing: nothing is missing there
            self._send(b"" if asked is not None else b"", "application/octet-stream")


@pytest.fixture
def hostile() -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hostile)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def measured_cli(status: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the real CLI with ``args``; its /proc status at exit goes to ``status``."""
    return subprocess.run(
        [sys.executable, "-c", _MEASURED, str(status), *args], capture_output=True, text=True, timeout=300
    )


def vm_hwm(status: Path, field: str = "VmHWM") -> int:
    """A memory field of a saved /proc status, in bytes."""
    lines = status.read_text().splitlines()
    return next(int(x.split()[1]) * 1024 for x in lines if x.startswith(field + ":"))


#: Runs the real CLI and writes its /proc status to argv[1] at exit, and to argv[1] +
#: ".start" once the CLI is imported (before it runs).
_MEASURED = (
    "import atexit, sys\n"
    "out = sys.argv.pop(1)\n"
    "atexit.register(lambda: open(out, 'w').write(open('/proc/self/status').read()))\n"
    "from cas_cli.main import main\n"
    "open(out + '.start', 'w').write(open('/proc/self/status').read())\n"
    "main()\n"
)


@pytest.mark.parametrize("shape", SHAPES)
def test_client_refuses_bomb_from_hostile_server(hostile: ThreadingHTTPServer, tmp_path: Path, shape: str) -> None:
    _, data, _ = next(b for b in bombs() if b[0] == shape)
    hostile.pack = data  # type: ignore[attr-defined]
    url = f"http://127.0.0.1:{hostile.server_address[1]}"
    status = tmp_path / "status"
    dest = tmp_path / "clone"
    proc = measured_cli(status, "clone", url, str(dest))
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert "Traceback" not in proc.stderr
    assert len(lines) == 1 and lines[0].startswith("cas: error:"), proc.stderr
    assert vm_hwm(status) < LIMIT + HEADROOM
    if dest.exists():
        with Store(dest) as store:
            assert store.objects.missing([FAKE]) == [FAKE]


@pytest.mark.parametrize("shape", SHAPES)
def test_a_path_remote_refuses_bombs_and_stores_nothing(tmp_path: Path, shape: str) -> None:
    """The path remote ingests through the same code (cas.ingest): same refusals."""
    from cas.errors import CasError
    from cas.remote.local import LocalRemote

    _, data, ids = next(b for b in bombs() if b[0] == shape)
    Store.init(tmp_path / "remote").close()
    remote = LocalRemote(tmp_path / "remote")
    try:
        with pytest.raises(CasError):
            remote.send_pack_bytes(data)
    finally:
        remote.close()
    with Store(tmp_path / "remote") as store:
        assert store.objects.missing(ids) == ids


@pytest.mark.parametrize("command", ["clone", "fetch"])
def test_client_refuses_a_ref_naming_a_real_1gib_blob_before_decoding_it(
    hostile: ThreadingHTTPServer, tmp_path: Path, command: str
) -> None:
    """The ref's target really is a 1 GiB blob (its id is right, its frame honest): the
    client expected a commit or a tag, so it refuses the frame from its header, and its
    peak memory stays far below the gigabyte it would have cost to decode it."""
    one_gib = zeros_id(GiB)
    hostile.target = one_gib  # type: ignore[attr-defined]
    frame = rle_frame(GiB, content_size=GiB)
    hostile.pack = raw_pack([(one_gib, ObjType.BLOB, GiB, frame)])  # type: ignore[attr-defined]
    url = f"http://127.0.0.1:{hostile.server_address[1]}"
    dest, status = tmp_path / "store", tmp_path / "status"
    if command == "clone":
        proc = measured_cli(status, "clone", url, str(dest))
    else:
        Store.init(dest).close()
        cli = [sys.executable, "-m", "cas_cli.main", "--store", str(dest)]
        subprocess.run([*cli, "remote", "add", "origin", url], check=True, capture_output=True)
        proc = measured_cli(status, "--store", str(dest), "fetch", "origin")
    assert proc.returncode == 5, proc.stderr  # IntegrityError
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cas: error:"), proc.stderr
    assert one_gib.short() in lines[0] and url in lines[0] and "blob" in lines[0]
    grown = vm_hwm(status) - vm_hwm(status.with_name("status.start"), "VmRSS")
    assert grown < HEADROOM, f"{grown >> 20} MiB"
    if dest.exists():
        with Store(dest) as store:
            assert store.objects.missing([one_gib]) == [one_gib]
            assert store.refs.as_dict() == {}
