"""Helpers for the Redis door's tests: a store with tokens and seeded entries, served by
`cas serve --redis-port` in a subprocess."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from servers import CasServer

from cas.history import commit_changes
from cas.objects import Entry, EntryKey, Env
from cas.server.auth import Scope, add_token
from cas.store import Store

T = TypeVar("T")

ENV_A = Env({"torch_version": "2.13.0", "device": "cpu-a"})
ENV_B = Env({"torch_version": "2.13.0", "device": "cpu-b"})
FX_KEY = "pt2:fx-graph-v1::fgraphkey:c1"


def wait_until(probe: Callable[[], T | None], what: str, timeout: float = 60.0) -> T:
    """Poll ``probe`` until it returns something other than None (a commit landed, a report
    arrived): the door's own event is the barrier, never a sleep. ``timeout`` only ends a
    test that would otherwise hang; it says nothing about speed."""
    deadline = time.monotonic() + timeout
    while True:
        got = probe()
        if got is not None:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"the door never {what} (waited {timeout:.0f} s)")
        time.sleep(0.05)


def wire(data: bytes, ms: int = 7) -> bytes:
    """An FX cache value as torch puts it."""
    return json.dumps({"data": base64.b64encode(data).decode(), "time_taken_ms": ms}).encode()


@dataclass
class Door:
    server: CasServer
    port: int
    store: Path
    write: str
    read: str

    def __enter__(self) -> Door:
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.stop()

    def client(self, token: str | None, protocol: int = 3) -> redis.Redis:
        """A client that raises what the door answers at once: redis-py retries a refused
        AUTH (an AuthenticationError is a ConnectionError to it) with seconds of backoff."""
        return redis.Redis(host="127.0.0.1", port=self.port, password=token, protocol=protocol,
                           retry=Retry(NoBackoff(), 0))


def seed(path: Path, origin: str | None = None) -> None:
    """main holds the same FX key for env A and env B, with different bytes; its commit
    was made here, or (``origin``) received from that remote."""
    with Store(path) as s:
        changes = {}
        for env, data in ((ENV_A, b"graph for A"), (ENV_B, b"graph for B")):
            s.objects.put_object(env)
            blob = s.objects.put(data)
            changes[EntryKey(env.id, "inductor", "fgraphkey", "")] = Entry(blob, len(data), None, {})
        oid = commit_changes(s, "main", changes, "seed")
        if origin is not None:  # what a pull from that remote records (commit marks local)
            s.meta.set(f"origin.{oid.hex}", f"remote:{origin}")


def start(tmp_path: Path, *args: str) -> Door:
    path = tmp_path / "store"
    with Store.init(path) as s:
        write = add_token("w", Scope.WRITE, store=s)
        read = add_token("r", Scope.READ, store=s)
        s.objects.put_object(ENV_A)
    seed(path)
    server = CasServer(
        path, tmp_path, "--redis-port", "0", "--redis-env", ENV_A.id.hex[:12],
        "--redis-flush-every", "0.2", *args,
    )
    assert server.redis_port is not None
    return Door(server, server.redis_port, path, write, read)


def run_fresh(tmp: Path, script: str, env: dict[str, str], *args: str, timeout: float = 540) -> dict:
    """Run ``script`` as a client on a new machine and return the JSON of its ``RESULT``
    line: ``python -I -S`` (no site processing, so the editable install of cas, a .pth
    hook, is not seen; the script adds the paths it needs from ``args``), empty HOME and
    TMPDIR, ``tmp/cache`` an empty cache dir, and only ``env`` set besides. The script
    reports ``cas_found``; it must be False."""
    for d in ("cache", "tmp", "home"):
        (tmp / d).mkdir(parents=True)
    path = tmp / "client.py"
    path.write_text(script)
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp / "home"), "TMPDIR": str(tmp / "tmp"), **env}
    proc = subprocess.run(
        [sys.executable, "-I", "-S", str(path), *args],
        cwd=tmp, env=env, capture_output=True, text=True, timeout=timeout,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    got: dict = json.loads(line[len("RESULT "):])
    assert got["cas_found"] is False
    return got
