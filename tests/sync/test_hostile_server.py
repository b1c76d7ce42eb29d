"""The client distrusts the server (invariant 8, client side): the real `cas` CLI against
a hostile fake server (tests/hostile_server.py). Every failure is one line, bounded in
memory (peak RSS of the client process, measured by the kernel) and in time (a deadline
the test sets small), and a failed clone leaves nothing."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from bombs import HEADROOM
from hostile_server import Handler, Hostile, MiB, TricklingHead, fixed, huge
from starlette.requests import Request
from starlette.responses import Response

from cas import history, pack
from cas.codec import ObjType
from cas.digest import ObjectId
from cas.errors import RemoteError
from cas.objects import Entry, EntryKey, Env
from cas.remote import bounded
from cas.remote.http import HttpRemote
from cas.store import Store

#: The `cas` CLI, writing its own peak RSS (VmHWM, of this program's memory alone) to the
#: file named by CAS_TEST_PEAK as it exits. ru_maxrss from wait4 is not that: a child
#: spawned by vfork (as subprocess does) inherits the parent's high-water mark, so a big
#: pytest worker would read as a big client.
RUN = (
    "import atexit, os, sys\n"
    "def peak():\n"
    "    for line in open('/proc/self/status'):\n"
    "        if line.startswith('VmHWM:'):\n"
    "            open(os.environ['CAS_TEST_PEAK'], 'w').write(line.split()[1])\n"
    "atexit.register(peak)\n"
    "from cas_cli.main import main; sys.argv[0] = 'cas'; main()"
)
#: Size of the bombs: far past every client limit (a client reading it whole would need
#: several times this), small enough to send in a second.
BOMB = 256 * MiB
#: Seconds a client process may live before the test kills it as hung.
LIFETIME = 120


@pytest.fixture(scope="module")
def hostile() -> Iterator[Hostile]:
    server = Hostile()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Store:
    """A real store with one commit: what the hostile server's refs and packs are made of."""
    path = tmp_path_factory.mktemp("source")
    with Store.init(path) as s:
        env = s.objects.put_object(Env({"device": "cpu"}))
        key = EntryKey(env, "inductor", "k")
        history.commit_changes(s, "main", {key: Entry(s.objects.put(b"x" * 999), 999)}, "c")
    return Store(path)


class Run:
    """One finished `cas` process: its exit code, stderr and peak resident memory."""

    def __init__(self, args: list[str], cwd: Path) -> None:
        peak = cwd / "peak"
        peak.unlink(missing_ok=True)
        env = dict(os.environ, CAS_AUTHOR="tester@example", XDG_CACHE_HOME=str(cwd / "xdg"),
                   CAS_TEST_PEAK=str(peak))
        env.pop("CAS_DIR", None)
        err = cwd / "stderr"
        with err.open("w") as stderr:
            proc = subprocess.Popen([sys.executable, "-c", RUN, *args], stdout=subprocess.DEVNULL,
                                    stderr=stderr, env=env, cwd=cwd)
            # A client that never ends fails the test (killed: exit -9), it does not hang it.
            killer = threading.Timer(LIFETIME, proc.kill)
            killer.start()
            try:
                status = proc.wait()
            finally:
                killer.cancel()
        self.code = status
        # A client killed as hung wrote no peak: it counts as having used everything.
        self.peak = int(peak.read_text()) * 1024 if peak.exists() else 1 << 62
        self.stderr = err.read_text()

    def one_line(self, code: int) -> str:
        assert self.code == code, self.stderr
        assert "Traceback" not in self.stderr, self.stderr
        first = self.stderr.strip().splitlines()[0]
        assert first.startswith("cas: error:") and len(first) < 400, self.stderr
        return first


def _baseline(tmp_path: Path) -> int:
    """Peak RSS of a `cas` that does next to nothing (imports, a store)."""
    return Run(["--store", str(tmp_path / "b"), "init"], tmp_path).peak


def clone(hostile: Hostile, tmp_path: Path, code: int, **answers: Handler) -> Run:
    """`cas clone` from the hostile server set with ``answers``; it must fail with one
    line and leave no directory behind."""
    url = hostile.set(**answers)
    run = Run(["clone", url, str(tmp_path / "dest")], tmp_path)
    run.one_line(code)
    assert not (tmp_path / "dest").exists()
    return run


def _refs(source: Store, names: list[str] | None = None) -> Handler:
    tip = source.refs.get("refs/heads/main")
    assert tip is not None
    body = "{" + ", ".join(f'"{n}": "{tip.hex}"' for n in names or ["refs/heads/main"]) + "}"
    return fixed(body.encode())


# -- 8: one bounded reader for every answer --------------------------------------------------


@pytest.mark.parametrize("status", [200, 400])
def test_a_huge_refs_listing_or_error_body_costs_a_bounded_read(
    hostile: Hostile, tmp_path: Path, status: int
) -> None:
    refs = hostile.stream(huge(b'{"refs/heads/main": "', BOMB), status=status)
    run = clone(hostile, tmp_path, 8, refs=refs)
    if status == 200:
        assert f"over the limit of {bounded.MAX_REFS} bytes" in run.stderr
    # The client kept at most its limit of the answer, never the answer.
    assert run.peak < _baseline(tmp_path) + 2 * bounded.MAX_REFS + HEADROOM
    assert run.peak < BOMB


@pytest.mark.parametrize(
    "body, why",
    [
        (b'{"refs/heads/main": 5}', "is a JSON int"),
        (b'["refs/heads/main"]', "a JSON list, not an object"),
        (b"<html>hello</html>", "not JSON"),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deep"),
        (b'{"refs/heads/main": "not an id"}', "malformed"),
        (b"\xff\xfe", "not JSON"),
    ],
    # Named ids: a body's own id would be 200 kB, and pytest hands the running test's
    # id to children as PYTEST_CURRENT_TEST, over the kernel's 128 KiB per-string limit.
    ids=["int", "list", "html", "deep", "bad-id", "not-utf8"],
)
def test_a_malformed_refs_answer_is_one_line(hostile: Hostile, tmp_path: Path, body: bytes, why: str) -> None:
    run = clone(hostile, tmp_path, 8, refs=fixed(body))
    assert why in run.one_line(8)


def test_a_redirect_is_not_followed(hostile: Hostile, tmp_path: Path) -> None:
    run = clone(hostile, tmp_path, 8, refs=fixed(b"", 302, {"location": "http://elsewhere.invalid/v1/refs"}))
    assert "redirected (HTTP 302) to 'http://elsewhere.invalid/v1/refs'" in run.one_line(8)


def test_an_error_answer_cannot_set_the_exit_code(hostile: Hostile, tmp_path: Path) -> None:
    body = b'{"error": "RemoteError", "message": "no\\nway", "exit_code": 0, "http_status": "x"}'
    run = clone(hostile, tmp_path, 8, refs=fixed(body, 409))
    assert "no way" in run.one_line(8)


# -- 9: a fetch answer holds what was asked for, once -----------------------------------------


def _pack_of(source: Store, copies: int) -> Handler:
    tip = source.refs.get("refs/heads/main")
    assert tip is not None
    otype, data = source.objects.require(tip)
    frame = pack.encode_bytes([(tip, otype, data)], level=None)
    head, body, _ = frame[:9], frame[9:-41], frame[-41:]
    # A pack of the same frame `copies` times, with a trailer that matches it.
    import blake3

    h = blake3.blake3(head)
    for _ in range(copies):
        h.update(body)
    trailer = pack._TRAILER.pack(pack.END, copies, h.digest())

    def chunks() -> Iterator[bytes]:
        yield head
        for _ in range(copies):
            yield body
        yield trailer

    return chunks  # type: ignore[return-value]


def test_a_fetch_answer_repeating_an_object_is_refused(hostile: Hostile, source: Store, tmp_path: Path) -> None:
    copies = BOMB // 300
    fetch = hostile.stream(_pack_of(source, copies))  # type: ignore[arg-type]
    run = clone(hostile, tmp_path, 5, refs=_refs(source), fetch=fetch)
    assert "twice" in run.one_line(5)
    # Refused at the second copy: the client read a few chunks of it, not all of them.
    assert hostile.sent < BOMB // 4


# -- 10: remote ref names follow the local rules -----------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["refs/remotes/origin/../../x", "refs/heads/-x", "refs/heads/HEAD", "HEAD", "refs/heads/a b",
     "refs/heads/" + "a" * 5000, "refs/heads/" + "b" * 385],
)
def test_a_remote_ref_name_breaking_the_local_rules_stops_the_clone_before_any_fetch(
    hostile: Hostile, source: Store, tmp_path: Path, name: str
) -> None:
    fetch = hostile.stream(_pack_of(source, 1))  # type: ignore[arg-type]
    run = clone(hostile, tmp_path, 8, refs=_refs(source, ["refs/heads/main", name]), fetch=fetch)
    line = run.one_line(8)
    assert "lists a ref that cannot be a local ref" in line
    assert hostile.hits == {"/v1/refs": 1}  # nothing was fetched


# -- 11: a total deadline per request ---------------------------------------------------------


def test_a_trickling_server_meets_the_deadline(hostile: Hostile, tmp_path: Path) -> None:
    store = tmp_path / "s"
    url = hostile.set(refs=hostile.trickle(b'{"refs/heads/main": ', every=0.05))
    assert Run(["--store", str(store), "init"], tmp_path).code == 0
    assert Run(["--store", str(store), "remote", "add", "origin", url, "-o", "deadline=1"], tmp_path).code == 0
    run = Run(["--store", str(store), "fetch"], tmp_path)
    assert "within its deadline of 1 s" in run.one_line(8)
    assert url in run.stderr


@pytest.mark.parametrize("where", ["refs", "fetch", "head"])
def test_a_trickling_clone_meets_the_deadline_it_was_given(
    hostile: Hostile, source: Store, tmp_path: Path, where: str
) -> None:
    """A trickle in a refs listing, in a pack (the header, then spaces: 58 of them make a
    frame header) or in the response head, each cut at the deadline."""
    if where == "head":
        head = TricklingHead(every=0.05)
        url = head.url
    elif where == "refs":
        url = hostile.set(refs=hostile.trickle(b"{", every=0.05))
    else:
        url = hostile.set(refs=_refs(source), fetch=hostile.trickle(pack.MAGIC + b"\x01", every=0.05))
    try:
        run = Run(["clone", url, str(tmp_path / "dest"), "-o", "deadline=0.5"], tmp_path)
    finally:
        if where == "head":
            head.close()
    assert "deadline of 0.5 s" in run.one_line(8)
    assert not (tmp_path / "dest").exists()


def test_a_missing_answer_naming_ids_not_asked_about_is_refused(hostile: Hostile, tmp_path: Path) -> None:
    asked = ObjectId.of(b"asked")
    url = hostile.set(missing=fixed(ObjectId.of(b"other").raw))
    remote = HttpRemote(url)
    with pytest.raises(RemoteError, match="ids that were not asked about"):
        remote.missing([asked])
    url = hostile.set(missing=fixed(asked.raw * 2))
    with pytest.raises(RemoteError, match="over the limit of 32 bytes"):
        remote.missing([asked])
    remote.close()


# -- 12: a failed clone leaves nothing, whatever the failure -----------------------------------


@pytest.fixture(scope="module")
def two_blobs(tmp_path_factory: pytest.TempPathFactory) -> Store:
    """A store whose two blobs (6 MiB each) travel in two fetches."""
    path = tmp_path_factory.mktemp("two-blobs")
    with Store.init(path) as s:
        env = s.objects.put_object(Env({"device": "cpu"}))
        changes = {EntryKey(env, "inductor", f"k{i}"): Entry(s.objects.put(bytes([i]) * (6 * MiB)), 6 * MiB)
                   for i in range(2)}
        history.commit_changes(s, "main", changes, "c")
    return Store(path)


def _honest_then_broken(source: Store) -> Handler:
    """Answers fetches from ``source`` until one blob has been sent; then any fetch of a
    blob gets a broken pack."""
    sent_blob = [False]

    async def handler(request: Request) -> Response:
        body = await request.body()
        ids = [ObjectId(body[i : i + 32]) for i in range(0, len(body), 32)]
        blobs = [o for o in ids if source.objects.require(o)[0] == ObjType.BLOB]
        if blobs and sent_blob[0]:
            return Response(b"CASPACK\x00\x01 not a frame")
        sent_blob[0] = sent_blob[0] or bool(blobs)
        objs = [o for o in pack.from_store(source.objects, ids) if o is not None]
        return Response(pack.encode_bytes(objs, level=None), media_type="application/x-cas-pack")

    return handler


def test_a_clone_failing_after_blobs_were_stored_leaves_nothing(
    hostile: Hostile, two_blobs: Store, tmp_path: Path
) -> None:
    run = clone(hostile, tmp_path, 5, refs=_refs(two_blobs), fetch=_honest_then_broken(two_blobs))
    assert "pack" in run.one_line(5)
    assert hostile.hits["/v1/fetch"] >= 4  # commit, nodes, a blob stored, the broken one


def test_a_clone_refused_after_objects_arrived_leaves_nothing(
    hostile: Hostile, source: Store, tmp_path: Path
) -> None:
    tip = source.refs.get("refs/heads/main")
    assert tip is not None
    # The commit arrives, then its manifest is answered with the commit again: a verdict
    # (an object not asked for), not a cut; nothing of the clone is kept.
    fetch = hostile.stream(_pack_of(source, 1))  # type: ignore[arg-type]
    clone(hostile, tmp_path, 5, refs=_refs(source), fetch=fetch)
    (tmp_path / "empty").mkdir()
    url = hostile.set(refs=_refs(source), fetch=fetch)
    Run(["clone", url, str(tmp_path / "empty")], tmp_path).one_line(5)
    assert list((tmp_path / "empty").iterdir()) == []


@pytest.mark.parametrize("body", [b"[" * 100_000, b'{"store_id": ["x"], "pack_multi_frame": "yes"}', b"\x00"])
def test_a_malformed_health_answer_reads_as_no_health(hostile: Hostile, body: bytes) -> None:
    """Health is asked in passing (the server's id, whether it reads multi-frame blobs):
    a malformed one counts as none, never as a traceback or a wrong value."""
    remote = HttpRemote(hostile.set(health=fixed(body)))
    assert remote.server_id is None and remote.multi_frame is False
    remote.close()
