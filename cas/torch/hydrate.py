"""Hydrate: write the entries of a ref that fit this process into a torch cache dir.

Torch's own lookup then decides every hit: the files land exactly where torch looks for
them (see :mod:`cas.torch.kinds`), all guard variants of a key included. Two rules keep
this never worse than no cache:

- only entries whose env id equals this process's env are written (bytes from another
  torch build never reach torch), and CPU-bound kinds only onto the same CPU model;
- every blob is hashed before it is written; a corrupt or missing one costs a warning
  and is skipped. Files are written atomically (temp file, then rename), so a
  concurrent torch never reads half a file;
- a revoked entry (:mod:`cas.revocations`) is never written, from any ref (counted as
  ``revoked``, one warning naming who revoked it and why).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import tempfile
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cas import entrykeys, manifest, revocations
from cas.digest import Hasher, ObjectId
from cas.errors import CorruptObject
from cas.objects import Entry, EntryKey, Env
from cas.refs import load_commit, resolve
from cas.store import Store
from cas.torch import blobs, kinds
from cas.torch._compat import header_dir as torch_pch_dir
from cas.torch._compat import torch_cache_dir
from cas.torch.autotune import records_for_here, write_records
from cas.torch.env import cpu_fingerprint, current_env
from cas.torch.warmth import predict
from cas.tuning import KIND as AUTOTUNE_RECORD

__all__ = ["HydrateResult", "hydrate", "hydrate_safely", "matching_entries"]


@dataclass
class HydrateResult:
    """What a hydrate did, per entry: written, already there, or skipped and why."""

    commit: ObjectId
    cache_dir: str
    written: int = 0
    present: int = 0
    skipped_other_env: int = 0
    skipped_other_cpu: int = 0
    corrupt: int = 0
    #: Entries whose key breaks its kind's grammar (cas.entrykeys): never written.
    bad_keys: int = 0
    #: Autotune records that are malformed (an impossible time, a source naming another
    #: kind's file, not a record): each warned about by name, never written.
    bad_records: int = 0
    #: Entries of this env withheld because they are revoked (cas.revocations).
    revoked: int = 0
    bytes_written: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)
    other_envs: dict[str, int] = field(default_factory=dict)
    #: Precompiled headers still being written in the background (see ``background``).
    pending: int = 0
    #: What torch will still rebuild here (:func:`cas.torch.warmth.predict`), as a dict.
    warmth: dict[str, Any] = field(default_factory=dict)
    _thread: threading.Thread | None = field(default=None, repr=False, compare=False)
    _cancel: threading.Event = field(default_factory=threading.Event, repr=False, compare=False)

    def wait(self, timeout: float | None = None) -> HydrateResult:
        """Wait for background writes (if any); the counts are final afterwards."""
        self.start()
        if self._thread is not None:
            self._thread.join(timeout)
        return self

    def start(self) -> None:
        """Start the background writes now, if they wait for it (``background="later"``)."""
        thread = self._thread
        if thread is not None and thread.ident is None:
            with contextlib.suppress(RuntimeError):  # started meanwhile by another thread
                thread.start()

    def cancel(self, timeout: float | None = 10.0) -> None:
        """Stop background writes: a header not finished is removed, never left half
        written (torch then builds it, if it ever asks). Runs at exit, so a program that
        never compiles does not wait ~1 s for 150 MB it will not use."""
        self._cancel.set()
        self.wait(timeout)  # one never started runs now, cancelled: it only frees its locks

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if not k.startswith("_")}
        out["commit"] = str(self.commit)
        return out


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, kinds.file_mode(path))
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def matching_entries(
    store: Store, root: ObjectId, env: Env, result: HydrateResult,
    revoked: revocations.RevokedSet | None = None,
) -> list[tuple[EntryKey, Entry]]:
    """Entries of manifest ``root`` that may be written here; counts the others."""
    env_id, cpu = env.id, f"cpu-{cpu_fingerprint()}"
    out = []
    for ek, entry in manifest.entries(store, root):
        if ek.env == env_id and revoked is not None and (why := revoked.get(entry.blob)) is not None:
            result.revoked += 1
            warnings.warn(f"cas: not writing {ek}: {why.line()}", stacklevel=3)
            continue
        if ek.env != env_id:
            result.skipped_other_env += 1
            short = ek.env.short()
            result.other_envs[short] = result.other_envs.get(short, 0) + 1
        elif ek.kind in kinds.CPU_BOUND_KINDS and ek.variant != cpu:
            result.skipped_other_cpu += 1
        elif ek.kind in kinds.ALL_KINDS or ek.kind == AUTOTUNE_RECORD:
            problem = entrykeys.problem(ek.kind, ek.key)
            if problem:
                result.bad_keys += 1
                warnings.warn(f"cas: skipping {ek}: {problem}", stacklevel=3)
                continue
            out.append((ek, entry))
    return out


def _count(result: HydrateResult, kind: str, size: int) -> None:
    result.written += 1
    result.bytes_written += size
    result.by_kind[kind] = result.by_kind.get(kind, 0) + 1


def _blob(store: Store, ek: EntryKey, entry: Entry) -> bytes | None:
    try:
        return blobs.read_or_skip(store, ek, entry)
    except Exception as exc:  # an unreadable record must not stop the others
        warnings.warn(f"cas: cannot read {ek}: {exc}", stacklevel=3)
        return None


#: Entries at least this large are streamed to disk chunk by chunk (a precompiled
#: header is ~150 MB): one chunk in memory, hashed as it is written.
STREAM_MIN = 8 << 20


class _Cancelled(Exception):
    pass


def _stream(store: Store, ek: EntryKey, entry: Entry, path: Path,
            cancel: threading.Event | None = None) -> bool | None:
    """Write a large blob to ``path`` atomically, verifying its hash; False if corrupt,
    None if ``cancel`` was set meanwhile (nothing is left behind)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    hasher, size = Hasher(), 0
    try:
        with os.fdopen(fd, "wb") as f:
            for chunk in store.objects.iter_blob(entry.blob):
                if cancel is not None and cancel.is_set():
                    raise _Cancelled
                hasher.update(chunk)
                size += f.write(chunk)
        blobs.check(ek, entry, hasher.digest(), size)
        os.chmod(tmp, kinds.file_mode(path))
        os.replace(tmp, path)
        return True
    except _Cancelled:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        return None
    except CorruptObject as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        blobs.report(exc)
        return False
    except Exception as exc:  # corrupt or unreadable: skip this entry, keep the others
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        warnings.warn(f"cas: skipping {ek}: {exc}", stacklevel=3)
        return False


def hydrate(
    store: Store,
    ref: str,
    cache_dir: str | Path | None = None,
    *,
    env: Env | None = None,
    check_policy: bool = True,
    pch_dir: str | Path | None = None,
    background: bool | str = False,
) -> HydrateResult:
    """Write the entries of ``ref`` that match ``env`` (default: this process's) into
    ``cache_dir`` (default: torch's cache dir for this process); precompiled headers go
    to ``pch_dir`` (default: torch's, under its default cache dir).

    ``background``: for a process about to compile. Precompiled headers (~150 MB each)
    are then written by a thread while torch traces, holding torch's own lock for that
    header: torch, reaching it, waits for the file instead of building it. Call
    ``result.wait()`` for final counts. ``background="later"``: the same, but the thread
    starts at ``result.start()`` (``enable`` calls it once torch imports dynamo, so a
    program that never compiles spends no CPU on headers; their locks are held meanwhile).

    Raises :class:`~cas.errors.RefNotFound` for an unknown ref and
    :class:`~cas.errors.PolicyError` when the trust policy (:mod:`cas.trust.policy`)
    forbids handing the ref's bytes to torch; everything per entry is counted in the
    result instead of raised.
    """
    root_dir = Path(cache_dir) if cache_dir is not None else torch_cache_dir()
    commit = resolve(store, ref)
    if check_policy:
        from cas.trust import check_ref_allowed

        check_ref_allowed(store, ref)
    result = HydrateResult(commit=commit, cache_dir=str(root_dir))
    env = env or current_env()
    root = load_commit(store, commit).manifest
    result.warmth = predict(store, root, env, cpu_fingerprint()).to_dict()
    deferred: list[tuple[EntryKey, Entry, Path, Any]] = []
    records: list[tuple[EntryKey, Entry]] = []
    used: list[ObjectId] = []
    for ek, entry in matching_entries(store, root, env, result, revocations.load(store)):
        used.append(entry.blob)
        if ek.kind == AUTOTUNE_RECORD:  # written last, over the raw files (cas.tuning)
            records.append((ek, entry))
            continue
        base = root_dir
        if ek.kind in kinds.PCH_KINDS:
            pch_dir = base = Path(pch_dir) if pch_dir is not None else torch_pch_dir()
        if ek.kind not in kinds.GUARDED_KINDS and ek.kind != "gemm_timing":
            # The path does not depend on the bytes: skip reading (a header is 150 MB).
            path = kinds.place(base, ek.kind, ek.key, b"")
            if path.exists():
                result.present += 1
                continue
            if background and ek.kind in kinds.PCH_KINDS:
                lock = _torch_header_lock(path)
                if lock is not None:
                    deferred.append((ek, entry, path, lock))
                    continue
            if entry.size >= STREAM_MIN:
                if _stream(store, ek, entry, path):
                    _count(result, ek.kind, entry.size)
                else:
                    result.corrupt += 1
                continue
        data = _blob(store, ek, entry)
        if data is None:
            result.corrupt += 1
            continue
        path = kinds.place(base, ek.kind, ek.key, data)
        if path.exists():
            if ek.kind != "gemm_timing":
                result.present += 1
                continue
            data = kinds.merge_gemm_timings(path.read_bytes(), data)
        _write_atomic(path, data)
        _count(result, ek.kind, len(data))
    # Every matching entry is in use here, written now or already present: a read for
    # a size-bounded gc's eviction order (noted in memory, written in a batch).
    store.maintenance.note_reads(used)
    if records:
        _write_autotune_records(store, records, root_dir, result)
    if deferred:
        _start_background(store, deferred, result, now=background != "later")
    return result


def _write_autotune_records(
    store: Store, records: list[tuple[EntryKey, Entry]], root_dir: Path, result: HydrateResult
) -> None:
    found = records_for_here(store, records)
    result.skipped_other_cpu += found.other_device
    result.corrupt += found.missing
    result.bad_records += len(found.bad)
    for ek, why in found.bad:  # the key is the peer's text: quoted, so the line stays one
        warnings.warn(f"cas: skipping autotune record {ek.key[:80]!r} on {ek.variant[:40]!r}: {why}", stacklevel=3)
    written = write_records(found.records, root_dir)
    if written:
        result.by_kind[AUTOTUNE_RECORD] = written
        result.written += written


def _torch_header_lock(path: Path) -> Any:
    """Torch's file lock for the precompiled header at ``path``, acquired; None if taken.

    Torch builds a missing header under ``<dir>/locks/<hash>.lock`` and skips the build if
    the file exists once it holds the lock; holding it while writing makes torch wait.
    """
    lock_dir = path.parent / "locks"
    lock_dir.mkdir(parents=True, exist_ok=True)
    lock_path = lock_dir / f"{path.name.split('.', 1)[0]}.lock"
    try:
        import fcntl
    except ImportError:  # no flock here: filelock's own portable lock, as torch takes it
        from filelock import FileLock, Timeout

        # Released by the writer thread, so the lock must not be thread-local.
        lock = FileLock(str(lock_path), thread_local=False)
        try:
            lock.acquire(timeout=0)
        except Timeout:  # another process is building or writing it: leave it to them
            return None
        return lock
    return _Flock.take(lock_path, fcntl)


class _Flock:
    """torch's header lock taken with flock(2) itself, which is what filelock's Unix lock
    is (the lock file stays; waiters share its inode): importing filelock costs a
    process that never compiles ~60 ms (issue 8, point 4)."""

    def __init__(self, fd: int, fcntl: Any) -> None:
        self._fd = fd
        self._fcntl = fcntl

    @classmethod
    def take(cls, path: Path, fcntl: Any) -> _Flock | None:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # another process is building or writing it: leave it to them
            os.close(fd)
            return None
        return cls(fd, fcntl)

    def release(self) -> None:
        if self._fd >= 0:
            self._fcntl.flock(self._fd, self._fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = -1


def _start_background(
    store: Store, deferred: list[tuple[EntryKey, Entry, Path, Any]], result: HydrateResult, now: bool = True
) -> None:
    # Its own handle keeps the store open even if the caller closes theirs meanwhile.
    own = Store(store.path)
    result.pending = len(deferred)

    def run() -> None:
        try:
            for ek, entry, path, lock in deferred:
                try:
                    if result._cancel.is_set():
                        continue  # cancelled before its turn: only the lock is released
                    done = _stream(own, ek, entry, path, result._cancel)
                    if done:
                        _count(result, ek.kind, entry.size)
                    elif done is not None:
                        result.corrupt += 1
                finally:
                    lock.release()
                    result.pending -= 1
        finally:
            own.close()

    # A daemon thread, cancelled at exit: Python joins non-daemon threads before atexit
    # handlers run, which would make every process wait for headers it may never use.
    result._thread = threading.Thread(target=run, name="cas-hydrate", daemon=True)
    if now:
        result._thread.start()
    atexit.register(result.cancel)


def hydrate_safely(
    store_path: str | Path, ref: str, cache_dir: str | Path | None = None, **kw: Any
) -> HydrateResult | None:
    """Hydrate, or warn once and return None: for callers about to compile anyway.

    A missing, locked or corrupt store, an unknown ref or a policy refusal must never
    make ``torch.compile`` fail or slower than without cas: the caller just compiles.
    """
    try:
        with Store(store_path) as store:
            return hydrate(store, ref, cache_dir, **kw)
    except Exception as exc:  # anything at all: a cache must never break the compile
        warnings.warn(f"cas: not hydrating from {store_path} ({ref}): {exc}", stacklevel=2)
        return None
