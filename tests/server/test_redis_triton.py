"""Triton's own remote-cache client (``triton.runtime.cache.RemoteCacheManager`` over
``RedisRemoteCacheBackend``) against `cas serve --redis-port`, in fresh processes where
cas is not importable and only Triton's environment variables point at the door.

No kernel is compiled (that needs a GPU): the client calls what Triton's compiler calls on
a cache manager, ``get_cache_manager(key)`` then ``get_file``/``put``. Triton is installed
once per test session into a temporary directory (its Python package and libtriton, unpacked
from the pinned wheel), never into the project's venv (where it could change torch's
behaviour); a failed download fails the tests.
"""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import sys
import sysconfig
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from cas import manifest
from cas.refs import load_commit, resolve
from cas.store import Store
from server.rediskit import ENV_A, Door, run_fresh, start, wait_until

#: The Triton the client runs (pinned: its key format and knobs are what is tested).
TRITON = "triton==3.9.0"

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("triton")]

# Run as `python -I -S client.py TRITON_DIR SITE REQUEST`: no site processing, so the
# editable install of cas (a .pth hook) is not seen; Triton's directory and the venv's
# site-packages (for `redis`) are added by hand.
CLIENT = r'''
import sys
sys.path.insert(0, sys.argv[1])
sys.path.append(sys.argv[2])
import importlib.util, json, os
cas_found = importlib.util.find_spec("cas") is not None
from triton import knobs
from triton.runtime.cache import RemoteCacheManager, get_cache_manager
# Triton 3.9.0's RedisRemoteCacheBackend reads knobs.cache.redis, but its knobs module
# defines those settings (TRITON_REDIS_*) as knobs.redis: without this line its
# constructor raises AttributeError, with or without cas.
shim = not hasattr(knobs.cache, "redis")
if shim:
    knobs.cache.redis = knobs.redis
req = json.loads(sys.argv[3])
cache = get_cache_manager(req["key"])  # what Triton's compile() asks for
assert isinstance(cache, RemoteCacheManager), type(cache)
out = {"cas_found": cas_found, "shim": shim}
try:
    if "put" in req:
        out["path"] = cache.put(bytes.fromhex(req["put"]), req["file"], binary=True)
    else:
        out["path"] = cache.get_file(req["file"])
except Exception as exc:
    out["error"] = type(exc).__name__ + ": " + str(exc)
print("RESULT " + json.dumps(out))
'''

#: A Triton cache key (a sha256 hex digest, as Triton's compile makes them).
KEY = hashlib.sha256(b"a kernel, its signature and its target").hexdigest()
#: How Triton names it in Redis keys: get_cache_manager base32-encodes the hex key.
B32 = base64.b32encode(bytes.fromhex(KEY)).decode().rstrip("=")
CUBIN = b"\x7fELF\x02\x01\x01" + bytes(range(256)) * 64 + b"\r\n$-1\r\n"  # RESP bytes inside


@pytest.fixture(scope="session")
def triton_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Triton's Python package and its native core (libtriton) from the pinned wheel, in a
    directory of this test session. The client needs nothing else (no compiler, no GPU
    backend), and unpacking only these parts of the 1 GiB wheel saves seconds of CPU."""
    wheels = tmp_path_factory.mktemp("triton-wheel")
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--disable-pip-version-check",
         "--dest", str(wheels), TRITON],
        capture_output=True, text=True, timeout=900,
    )
    found = sorted(wheels.glob("triton-*.whl"))
    if proc.returncode != 0 or len(found) != 1:
        pytest.fail(f"could not download {TRITON} for the Triton client test:\n{proc.stderr[-3000:]}")
    target = tmp_path_factory.mktemp("triton")
    with zipfile.ZipFile(found[0]) as wheel:
        for member in wheel.infolist():
            if member.filename.endswith(".py") or member.filename == "triton/_C/libtriton.so":
                wheel.extract(member, target)
    if not (target / "triton" / "runtime" / "cache.py").is_file():
        pytest.fail(f"{found[0].name} holds no triton/runtime/cache.py")
    return target


@pytest.fixture
def door(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Door]:
    with start(tmp_path, *request.param) as d:
        yield d


def _triton(tmp: Path, triton_dir: Path, port: int, request: dict[str, str]) -> dict:
    """One fresh Triton process (a new machine: empty cache dir, empty TMPDIR, no cas)."""
    env = {
        "TRITON_CACHE_DIR": str(tmp / "cache"),
        "TRITON_CACHE_MANAGER": "triton.runtime.cache:RemoteCacheManager",
        "TRITON_REMOTE_CACHE_BACKEND": "triton.runtime.cache:RedisRemoteCacheBackend",
        "TRITON_REDIS_HOST": "127.0.0.1",
        "TRITON_REDIS_PORT": str(port),
    }
    got = run_fresh(
        tmp, CLIENT, env, str(triton_dir), sysconfig.get_paths()["purelib"],
        json.dumps({"key": KEY, "file": "k.cubin", **request}), timeout=300,
    )
    assert got["shim"] is True  # Triton 3.9.0 cannot build its Redis backend unaided
    return got


def _materialized(got: dict, tmp: Path) -> bytes:
    """The file Triton's RemoteCacheManager wrote into its own cache dir, as Triton names it."""
    path = Path(got["path"])
    assert path == tmp / "cache" / B32 / "k.cubin"
    return path.read_bytes()


def _triton_entries(path: Path, old: object) -> tuple[dict, dict[str, bytes]]:
    """main's commit metadata and triton_remote entries once a commit after ``old`` lands."""

    def landed() -> tuple[dict, dict[str, bytes]] | None:
        with Store(path) as s:
            tip = resolve(s, "main")
            if tip == old:
                return None
            commit = load_commit(s, tip)
            found = {
                k.key: s.objects.get(e.blob, verify=True)
                for k, e in manifest.entries(s, commit.manifest)
                if k.kind == "triton_remote" and k.env == ENV_A.id
            }
            return dict(commit.metadata), found

    return wait_until(landed, "committed to main")


def _tip(path: Path) -> object:
    with Store(path) as s:
        return resolve(s, "main")


@pytest.mark.parametrize("door", [("--redis-anonymous-read",)], indirect=True)
def test_triton_reads_what_a_token_holder_wrote(door: Door, triton_dir: Path, tmp_path: Path) -> None:
    """Triton sends no password: on a door with anonymous reads its get_file is served
    from the branch, and its put is refused (NOPERM), which Triton raises."""
    before = _tip(door.store)
    assert door.client(door.write).set(f"triton:{B32}:k.cubin", CUBIN) is True
    meta, entries = _triton_entries(door.store, before)
    assert meta["token"] == "w"
    assert entries == {f"{B32}/k.cubin": CUBIN}

    got = _triton(tmp_path / "reader", triton_dir, door.port, {})
    assert _materialized(got, tmp_path / "reader") == CUBIN

    after = _tip(door.store)
    denied = _triton(tmp_path / "putter", triton_dir, door.port, {"put": b"other".hex()})
    assert denied["error"].startswith("NoPermissionError")
    # Refused at once, so nothing was queued: a permitted write after it commits alone.
    door.client(door.write).set(f"triton:{B32}:after.cubin", b"after")
    _, entries = _triton_entries(door.store, after)
    assert entries == {f"{B32}/k.cubin": CUBIN, f"{B32}/after.cubin": b"after"}


@pytest.mark.parametrize("door", [("--redis-anonymous-write",)], indirect=True)
def test_a_triton_put_is_committed_then_read_by_a_fresh_triton(
    door: Door, triton_dir: Path, tmp_path: Path
) -> None:
    before = _tip(door.store)
    put = _triton(tmp_path / "first", triton_dir, door.port, {"put": CUBIN.hex()})
    assert "error" not in put
    assert _materialized(put, tmp_path / "first") == CUBIN

    meta, entries = _triton_entries(door.store, before)
    assert meta["token"] == "anonymous" and meta["producer"] == "redis"
    assert entries == {f"{B32}/k.cubin": CUBIN}

    got = _triton(tmp_path / "second", triton_dir, door.port, {})
    assert _materialized(got, tmp_path / "second") == CUBIN
    missing = _triton(tmp_path / "third", triton_dir, door.port, {"file": "absent.json"})
    assert missing["path"] is None
