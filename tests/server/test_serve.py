"""`cas serve` as an operator and a client see it: auth, limits, health, logs, TLS, tokens."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from servers import CasServer, Served, make_tls_cert

from cas import pack
from cas.codec import ObjType
from cas.digest import ObjectId
from cas.errors import RemoteError, RequestTooLarge
from cas.remote.http import HttpRemote
from cas.server.auth import Scope, Tokens, add_token
from cas.store import Store


def cas(store: Path, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-c", "from cas_cli.main import main; main()", "--store", str(store), *args],
        capture_output=True, text=True, timeout=60,
    )
    assert (proc.returncode == 0) == ok, proc.stderr
    return proc


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_health_needs_no_token_and_reports_limits(shared_served: Served) -> None:
    got = httpx.get(shared_served.url + "/v1/health")
    assert got.status_code == 200
    body = got.json()
    assert body["status"] == "ok" and body["auth"] is True
    assert body["max_request"] == 256 << 20


def test_401_and_403_are_json_with_clear_messages(shared_served: Served) -> None:
    no = httpx.get(shared_served.url + "/v1/refs")
    assert no.status_code == 401
    assert no.json() == {"error": "AuthError", "message": "missing or unknown token",
                         "hint": no.json()["hint"]}
    assert no.headers["www-authenticate"] == "Bearer"
    bad = httpx.get(shared_served.url + "/v1/refs", headers=auth("cas_wrong"))
    assert bad.status_code == 401
    ro = httpx.post(shared_served.url + "/v1/packs", content=b"x", headers=auth(shared_served.read_token))
    assert ro.status_code == 403
    assert ro.json()["message"] == "token 'reader' lacks write scope"
    assert httpx.get(shared_served.url + "/v1/refs", headers=auth(shared_served.read_token)).json() == {}


def test_errors_are_json_even_for_unknown_routes_and_bad_input(shared_served: Served) -> None:
    h = auth(shared_served.write_token)
    nope = httpx.get(shared_served.url + "/v2/whatever", headers=h)
    assert nope.status_code == 404 and nope.json()["error"] == "NotFound"
    odd = httpx.post(shared_served.url + "/v1/missing", content=b"123", headers=h)
    assert odd.status_code == 400 and "multiple of 32" in odd.json()["message"]
    bad_ref = httpx.put(shared_served.url + "/v1/refs/refs/heads/a..b", json={"new": None}, headers=h)
    assert bad_ref.status_code == 400 and bad_ref.json()["error"] == "BadRefName"
    corrupt = pack.encode_bytes([(ObjectId.of(b"claimed"), ObjType.BLOB, b"actual")])
    got = httpx.post(shared_served.url + "/v1/packs", content=corrupt, headers=h)
    assert got.status_code == 422 and got.json()["error"] == "CorruptObject"


def test_request_size_limit_is_413_and_nothing_is_stored(tmp_path: Path) -> None:
    s = Served(tmp_path, "--max-request", "64K")
    try:
        data = os.urandom(100_000)  # incompressible: the pack stays above the limit
        small = b"z" * 1000
        r = HttpRemote(s.url, token=s.write_token)
        with pytest.raises(RequestTooLarge, match="exceeds the server limit"):
            r.send_pack_bytes(pack.encode_bytes([(ObjectId.of(data), ObjType.BLOB, data)]))
        r.send_pack([(ObjectId.of(small), ObjType.BLOB, small)])
        assert r.missing([ObjectId.of(data), ObjectId.of(small)]) == [ObjectId.of(data)]
        # Without a Content-Length (chunked upload) the limit holds as well.
        chunked = httpx.post(s.url + "/v1/packs", content=iter([data[:50_000], data[50_000:]]),
                             headers=auth(s.write_token))
        assert chunked.status_code == 413
        r.close()
    finally:
        s.stop()


def test_access_log_names_token_request_and_status(served: Served) -> None:
    httpx.get(served.url + "/v1/refs", headers=auth(served.read_token))
    httpx.get(served.url + "/v1/refs", headers=auth("cas_wrong"))
    served.stop()
    lines = served.server.access_log.read_text().splitlines()
    assert any('reader "GET /v1/refs" 200' in line for line in lines)
    assert any('- "GET /v1/refs" 401' in line for line in lines)
    assert all(served.read_token not in line for line in lines)


def test_tls_with_a_self_signed_certificate(tmp_path: Path) -> None:
    cert, key = make_tls_cert(tmp_path)
    s = Served(tmp_path, "--tls-cert", str(cert), "--tls-key", str(key), scheme="https")
    try:
        assert s.url.startswith("https://")
        trusted = HttpRemote(s.url, token=s.read_token, verify=str(cert))
        assert trusted.list_refs() == {}
        trusted.close()
        untrusted = HttpRemote(s.url, token=s.read_token)
        with pytest.raises(RemoteError, match="TLS failed") as info:
            untrusted.list_refs()
        assert not info.value.transient  # retrying cannot fix trust
        untrusted.close()
        with pytest.raises(httpx.HTTPError):
            httpx.get(s.url.replace("https://", "http://") + "/v1/health", timeout=3)
    finally:
        s.stop()


def test_token_add_prints_once_and_stores_only_a_hash(tmp_path: Path) -> None:
    store = tmp_path / "s"
    cas(store, "init")
    token = cas(store, "token", "add", "ci", "--scope", "write").stdout.strip()
    assert token.startswith("cas_") and len(token) > 40
    listed = cas(store, "--json", "token", "list").stdout
    assert json.loads(listed) == [{"name": "ci", "scope": "write"}]
    assert token not in listed
    with Store(store) as st:
        assert token not in (st.meta.get("token.ci") or "")
        rec = Tokens.from_store(st).check(token)
        assert rec is not None and rec.scope is Scope.WRITE
    cas(store, "token", "remove", "ci")
    assert "no token named" in cas(store, "token", "remove", "ci", ok=False).stderr


def test_token_file_mode(tmp_path: Path) -> None:
    store, tokens = tmp_path / "s", tmp_path / "tokens.json"
    Store.init(store).close()
    token = add_token("ops", Scope.READ, path=tokens)
    assert token not in tokens.read_text()
    assert oct(tokens.stat().st_mode & 0o777) == "0o600"
    server = CasServer(store, tmp_path, "--token-file", str(tokens))
    try:
        assert httpx.get(server.url + "/v1/refs", headers=auth(token)).status_code == 200
    finally:
        server.stop()


def test_serve_without_tokens_refuses_to_start(tmp_path: Path) -> None:
    store = tmp_path / "s"
    Store.init(store).close()
    proc = cas(store, "serve", "--port", "1", ok=False)
    assert "no tokens" in proc.stderr and "Traceback" not in proc.stderr
    proc = cas(store, "serve", "--tls-cert", str(tmp_path / "c.pem"), "--no-auth", ok=False)
    assert "TLS needs both" in proc.stderr
