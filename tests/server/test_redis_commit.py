"""The Redis door's commit process (cas.server.redis_commit): a SET whose commit landed
survives a kill -9 of the server; a commit process that dies is restarted and loses
nothing; while it is down, SETs are refused with a clear error."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import signal
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import redis.asyncio

from cas import manifest
from cas.fsck import fsck
from cas.refs import load_commit
from cas.server.redis_commit import Batches, CommitProcess, CommitResult
from cas.server.redis_door import RedisDoor, RedisOptions
from cas.store import Store
from server.rediskit import ENV_A, start, wait_until, wire


def _main(path: Path) -> dict[str, bytes]:
    """main's inductor entries: {key: blob bytes}."""
    with Store(path) as s:
        tip = s.refs.get("refs/heads/main")
        if tip is None:
            return {}
        pairs = manifest.entries(s, load_commit(s, tip).manifest)
        return {k.key: s.objects.get(e.blob) or b"" for k, e in pairs}


def _committed(path: Path, keys: dict[str, bytes]) -> bool | None:
    got = _main(path)
    return True if all(got.get(k) == v for k, v in keys.items()) else None


def _commit_pids(log: Path) -> list[int]:
    return [int(p) for p in re.findall(r"commit process (\d+) started", log.read_text(errors="replace"))]


def _gone(pid: int) -> bool | None:
    """True once ``pid`` exited (a zombie counts: it holds nothing)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return True if state in ("Z", "X") else None


def _fx(key: str) -> str:
    return f"pt2:fx-graph-v1::{key}:c1"


def test_a_committed_set_survives_kill_9_of_the_server(tmp_path: Path) -> None:
    door = start(tmp_path)
    try:
        client = door.client(door.write)
        values = {f"durable{i}": os.urandom(100 + i) for i in range(20)}
        for key, data in values.items():
            assert client.set(_fx(key), wire(data)) is True
        wait_until(lambda: _committed(door.store, values), "committed the SETs")
        child = wait_until(lambda: (p[-1] if (p := _commit_pids(door.server.log)) else None),
                           "logged its commit process")
        door.server.proc.send_signal(signal.SIGKILL)
        door.server.proc.wait()
    finally:
        door.server.stop()
    wait_until(lambda: _gone(child), "commit process exited after the server's death")
    with Store(door.store) as s:
        assert fsck(s).ok
    assert _committed(door.store, values)


def test_a_killed_commit_process_is_restarted_and_nothing_is_lost(tmp_path: Path) -> None:
    with start(tmp_path) as door:
        client = door.client(door.write)
        first = {"before": b"set before the kill"}
        client.set(_fx("before"), wire(first["before"]))
        wait_until(lambda: _committed(door.store, first), "committed the first SET")
        old = _commit_pids(door.server.log)[-1]
        os.kill(old, signal.SIGKILL)
        wait_until(lambda: _gone(old), "commit process died")
        later = {f"after{i}": os.urandom(64) for i in range(10)}
        for key, data in later.items():
            # The door may notice the death while committing (the batch is re-queued and
            # SETs refused until the restart): a client that retries loses nothing.
            wait_until(lambda k=key, d=data: _set_or_refused(client, k, d), "accepted the SET")
        wait_until(lambda: _committed(door.store, {**first, **later}), "committed after the restart")
        assert _commit_pids(door.server.log)[-1] != old
    with Store(door.store) as s:
        assert fsck(s).ok


def _set_or_refused(client: redis.Redis, key: str, data: bytes) -> bool | None:
    try:
        return True if client.set(_fx(key), wire(data)) else None
    except redis.exceptions.ResponseError as exc:
        assert "commit process" in str(exc)
        return None


class _DiesOnce(CommitProcess):
    """A fault: the real commit process is killed just before the first batch reaches it."""

    died = 0

    def commit(self, batches: Batches, base: bytes | None) -> CommitResult:
        if not self.died:
            self.died = 1
            assert self.pid is not None
            os.kill(self.pid, signal.SIGKILL)
            wait_until(lambda: None if self.alive() else True, "commit process died")
        return super().commit(batches, base)


def test_a_batch_the_commit_process_died_with_is_requeued_and_sets_are_refused_meanwhile(
    tmp_path: Path,
) -> None:
    door_tmp = tmp_path / "door"
    door_tmp.mkdir()
    d = start(door_tmp)  # the seeded store and tokens; its server is not used
    d.server.stop()
    asyncio.run(_requeue_scenario(d.store))
    with Store(d.store) as s:
        assert fsck(s).ok


async def _requeue_scenario(path: Path) -> None:
    # No timed flushes: the test starts each one, so the refused window is certain.
    door = RedisDoor(path, None, RedisOptions(port=0, env=ENV_A.id.hex, flush_every=3600))
    door.committer = _DiesOnce(path, ENV_A.id.hex, "main")
    await door.start()
    client = redis.asyncio.Redis(port=door.port, protocol=2)
    try:
        assert await client.set(_fx("kept"), wire(b"through a death"))
        door.start_flush()
        assert door._flush_task is not None
        await door._flush_task
        await asyncio.sleep(0)  # its done-callback: the batch is re-queued
        assert door.commit_down
        with pytest.raises(redis.exceptions.ResponseError, match="commit process"):
            await client.set(_fx("refused"), wire(b"while down"))
        # Served from the re-queued batch meanwhile (the door reads its write branch).
        assert json.loads(await client.get(_fx("kept")))["data"] == base64.b64encode(b"through a death").decode()
        door.start_flush()  # restarts the process and commits the re-queued batch
        await door._flush_task
        await asyncio.sleep(0)
        assert not door.commit_down
        assert await client.set(_fx("after"), wire(b"after the restart"))
    finally:
        await client.aclose()
        await door.stop()
    got = _main(path)
    assert got["kept"] == b"through a death" and got["after"] == b"after the restart"
    assert "refused" not in got


def _metric(door: Any, name: str) -> float:
    text = httpx.get(f"{door.server.url}/metrics", headers={"Authorization": f"Bearer {door.read}"}).text
    (line,) = [x for x in text.splitlines() if x.startswith(name + " ")]
    return float(line.split()[1])


def test_whole_small_writes_are_not_read_past_the_budget_while_commits_stall(tmp_path: Path) -> None:
    """SETs of 5.5 KiB, each whole in one packet (redis-py sends a value under 6,000 bytes
    with its command), while the commit process is stopped (as on a stalled disk): each
    declares nothing before it is read,
    yet the door stops reading the writer once the values it holds fill its 1 MiB budget,
    and takes the rest once commits land again; nothing is refused or lost."""
    door = start(tmp_path, "--redis-max-pending", "1M", "--redis-flush-every", "600")
    try:
        child = wait_until(lambda: (p[-1] if (p := _commit_pids(door.server.log)) else None),
                           "logged its commit process")
        values = {_fx(f"small{i}"): wire(os.urandom(4 << 10)) for i in range(400)}  # ~2.2 MiB in all
        done: list[str] = []

        def write() -> None:
            client = door.client(door.write)
            for key, value in values.items():
                assert client.set(key, value) is True
                done.append(key)

        os.kill(child, signal.SIGSTOP)
        writer = threading.Thread(target=write, daemon=True)
        try:
            writer.start()
            # The barrier: the door reports a writer waiting for room (or, were it to read
            # on regardless, the writer gets through every SET).
            wait_until(lambda: True if _metric(door, "cas_redis_write_waits_total") >= 1 or len(done) == len(values)
                       else None, "made the writer wait for room")
            assert len(done) < len(values)
            assert _metric(door, "cas_redis_held_bytes") <= (1 << 20) + (256 << 10)
        finally:
            os.kill(child, signal.SIGCONT)
        writer.join(120)
        assert len(done) == len(values)
        wait_until(lambda: True if len(_main(door.store)) >= len(values) // 2 else None, "committed the SETs")
        reader = door.client(door.read)
        assert all(reader.get(k) == v for k, v in list(values.items())[::7])
    finally:
        door.server.stop()
