"""A full disk is a clear StoreFull, never a corrupt store (docs/robustness.md).

Two ways to run out of room, both always run:

* a real small file system: an 8 MiB tmpfs mounted for the test (needs root and
  CAP_SYS_ADMIN; where mounting is refused, the test falls back to the next way);
* a file size limit (RLIMIT_FSIZE, SIGXFSZ ignored) on a writer process, which makes the
  kernel refuse to grow data.mdb exactly as a full disk does.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from cas.codec import ObjType
from cas.errors import StoreFull
from cas.fsck import fsck
from cas.objects import Commit, ManifestNode
from cas.store import Store

WORKER = Path(__file__).with_name("crash_workers.py")


def seed(path: Path) -> tuple[str, str]:
    """An early blob and a commit on main, to check afterwards that nothing was lost."""
    with Store.init(path) as store:
        early = store.objects.put(os.urandom(300_000))
        root = store.objects.put_object(ManifestNode(0, 0))
        commit = store.objects.put_object(Commit(root, (), "t", 0, "before the disk filled"))
        store.refs.set("refs/heads/main", commit)
    return early.hex, commit.hex


def check_in_fresh_process(path: Path) -> str:
    out = subprocess.run(
        [sys.executable, str(WORKER), "check", str(path)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def fill_with_size_limit(path: Path, early: str) -> dict[str, object]:
    limit = os.path.getsize(path / "data.mdb") + (3 << 20)

    def limit_writes() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get EFBIG, not a killed process
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    out = subprocess.run(
        [sys.executable, str(WORKER), "fill", str(path), early],
        capture_output=True, text=True, timeout=120, preexec_fn=limit_writes,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def assert_full_and_intact(result: dict[str, object], path: Path, early: str, commit: str) -> None:
    assert result["error"] == "StoreFull", result
    message = str(result["message"])
    assert "\n" not in message and "no space left" in message
    assert result["exit_code"] == 7
    assert result["early_ok"] is True and 0 < int(result["batches"]) < 1000  # type: ignore[call-overload]
    assert check_in_fresh_process(path) == "clean"
    with Store(path) as store:
        assert store.refs.get("refs/heads/main") is not None
        assert store.refs.get("refs/heads/main").hex == commit  # type: ignore[union-attr]
        assert store.objects.get(store.objects.resolve_unique(early[:16]), verify=True) is not None


def test_file_size_limit_gives_store_full_and_loses_nothing(tmp_path: Path) -> None:
    path = tmp_path / "store"
    early, commit = seed(path)
    result = fill_with_size_limit(path, early)
    assert_full_and_intact(result, path, early, commit)
    # once there is room again (no limit here), the same store takes writes
    with Store(path) as store:
        store.objects.write([(ObjType.BLOB, os.urandom(1 << 20))])
        assert fsck(store).ok


def _mount_tmpfs(where: Path, size: str) -> bool:
    where.mkdir()
    try:
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
            capture_output=True, timeout=30,
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0


def test_full_small_file_system(tmp_path: Path) -> None:
    small = tmp_path / "small"
    if not _mount_tmpfs(small, "8m"):
        # no permission to mount here: the file size limit stands in for the small disk
        path = tmp_path / "store"
        early, commit = seed(path)
        assert_full_and_intact(fill_with_size_limit(path, early), path, early, commit)
        return
    try:
        path = small / "store"
        early, commit = seed(path)
        filler = small / "filler"
        filler.write_bytes(b"\0" * (1 << 20))  # to free later
        with Store(path) as store:
            with pytest.raises(StoreFull) as err:
                for _ in range(100):
                    store.objects.write([(ObjType.BLOB, os.urandom(256 << 10)) for _ in range(4)])
            assert "\n" not in str(err.value) and err.value.exit_code == 7
            assert "no space left" in str(err.value)
            # the process that hit the wall keeps its store
            assert fsck(store).ok
        assert check_in_fresh_process(path) == "clean"
        filler.unlink()
        with Store(path) as store:
            store.objects.put(os.urandom(100_000))  # room again: writes work again
            assert store.refs.get("refs/heads/main").hex == commit  # type: ignore[union-attr]
            assert fsck(store).ok
    finally:
        subprocess.run(["umount", "-l", str(small)], capture_output=True, timeout=30)
