"""The live backend: torch's remote-cache get/put answered from the store.

Torch 2.13 looks its FX graph, AOTAutograd, autotune and PGO remote caches up through
``RemoteCache`` subclasses whose backend can be replaced class by class
(``RemoteCache.backend_override_cls``, the hook torch's own tests use). :func:`install`
points the four caches at a :class:`LiveCache`; torch still decides every hit (guards,
version checks), we only hand it bytes.

Wire shape (what torch's caches pass the backend): :mod:`cas.torch.wire`. Stored shape: the decoded pickle is the blob, keyed by torch's own cache key and the kind
that capture and hydrate use (``inductor``, ``aot_autograd``, ``pgo``), so one entry
serves hydrate, Mega-Cache export and the live path alike. The value is re-wrapped on
get. Remote autotune keys (``<config-set hash>::<kernel hash>``) cannot be mapped to the
local ``<xx>/<hash>.best_config`` path hydrate writes, so they get their own kind,
``autotune_remote``.

Safety ("never worse than no cache"): only entries whose env id equals
this process's env are served; every served blob is re-hashed and must match its id;
anything that goes wrong is one warning and a miss, never an exception into torch. A put
is buffered in memory and written by :meth:`LiveCache.flush` as one commit. A revoked
entry (:mod:`cas.revocations`) is a miss: the revocations are re-read when their branch
moves, so one that arrives while a server runs takes effect on the next get.
"""

from __future__ import annotations

import os
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cas import manifest, revocations
from cas.codec import ObjType
from cas.digest import ObjectId
from cas.errors import CasError
from cas.history import commit_changes
from cas.objects import Entry, EntryKey, Env
from cas.provenance import mark_local
from cas.refs import branch_ref, load_commit
from cas.store import Store
from cas.torch import _compat, autotune, blobs, cxx
from cas.torch.artifacts import commit_metadata, entry_key
from cas.torch.capture import process_artifacts
from cas.torch.env import cpu_fingerprint
from cas.torch.kinds import Found, scan
from cas.torch.warn import warn_once
from cas.torch.wire import (
    AUTOTUNE_REMOTE,
    LIVE_KINDS,
    TRITON_REMOTE,
    parse_backend_key,
    unwrap,
    wrap,
)

__all__ = [
    "AUTOTUNE_REMOTE",
    "TRITON_REMOTE",
    "LiveCache",
    "LiveStats",
    "install",
    "parse_backend_key",
    "uninstall",
]

#: Keys kept per kind in LiveStats.missed: enough to name what a run missed, bounded.
MISSED_KEPT = 32
#: GPU cache-dir files no remote cache carries; flush records those written meanwhile.
_GPU_SIDE_KINDS = frozenset({"autotune", "triton_kernel"})


@dataclass
class LiveStats:
    """What the live backend did in this process."""

    gets: int = 0
    hits: int = 0
    misses: int = 0
    puts: int = 0
    errors: int = 0
    recorded: int = 0
    autotuned: int = 0  # autotune records committed (flush_autotune)
    skipped_other_env: int = 0
    revoked: int = 0  # gets whose entry is revoked (a miss)
    by_kind: dict[str, dict[str, int]] = field(default_factory=lambda: defaultdict(dict))
    #: The first MISSED_KEPT keys per kind that missed (a miss report names them).
    missed: dict[str, list[str]] = field(default_factory=dict)

    def bump(self, kind: str, what: str) -> None:
        self.by_kind[kind][what] = self.by_kind[kind].get(what, 0) + 1

    def miss(self, kind: str, key: str) -> None:
        self.misses += 1
        self.bump(kind, "misses")
        keys = self.missed.setdefault(kind, [])
        if len(keys) < MISSED_KEPT and key not in keys:
            keys.append(key)

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k != "by_kind"}
        out["by_kind"] = {k: dict(v) for k, v in self.by_kind.items()}
        return out


@dataclass
class _Pending:
    entry: Entry
    data: bytes


class LiveCache:
    """Serves torch's remote-cache traffic from one ref of a store, records new entries.

    ``root`` is the manifest to serve from (None: serve nothing, e.g. when the policy
    refused the ref); ``branch`` is where :meth:`flush` commits what torch put (None: do
    not record). ``serve_puts``: also serve the puts not yet committed, right only when
    ``root`` is ``branch``'s own commit: a pin serves exactly what it pins (design
    invariant 7), never what this process records to another branch. All methods are
    thread-safe and, but :meth:`record`, never raise into torch.
    """

    def __init__(
        self,
        store: Store,
        env: Env,
        *,
        root: ObjectId | None,
        branch: str | None,
        message: str = "live: artifacts compiled by torch.compile",
        metadata: dict[str, Any] | None = None,
        base: ObjectId | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        serve_puts: bool = False,
    ) -> None:
        self.store = store
        self.serve_puts = serve_puts
        #: Commit a new ``branch`` starts from (the served ref), so it holds both.
        self.base = base
        #: Torch cache dir whose new C++ kernels / timings / Triton files flush records.
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.since = time.time() - 1.0
        self.env = env
        self.env_id = env.id
        self.root = root
        self.branch = branch
        self.message = message
        self.metadata = dict(metadata or {})
        self.stats = LiveStats()
        self._lock = threading.RLock()
        self._index: dict[tuple[str, str], list[tuple[str, Entry]]] | None = None
        self._foreign: dict[tuple[str, str], int] = {}
        self._revocations = revocations.Watch(store)
        self._revoked_keys: set[tuple[str, str]] = set()
        self._pending: dict[EntryKey, _Pending] = {}
        self._owner_pid = os.getpid()
        self.observed: Any = None  # cas.torch.autotune.Observed, once watch_autotune ran
        self._unwatch: Callable[[], None] | None = None

    # -- serving ------------------------------------------------------------------------

    def serve_from(self, root: ObjectId | None) -> None:
        """Serve the manifest ``root`` from now on (a server's ref moved); None: nothing."""
        with self._lock:
            if root != self.root:
                self.root, self._index, self._foreign = root, None, {}

    def check_revocations(self) -> bool:
        """Re-read the revocations if their branch moved (one ref read); True, and the
        index is rebuilt on the next get, if the revoked set changed."""
        with self._lock:
            if not self._revocations.refresh():
                return False
            self._index, self._foreign = None, {}
            return True

    def _build_index(self) -> dict[tuple[str, str], list[tuple[str, Entry]]]:
        # One pass over the manifest, on the first get: the live kinds of this env by
        # (kind, key), all guard variants, and how many entries other envs hold per key
        # (for the "entry is for another env" warning). Revoked entries are left out.
        index: dict[tuple[str, str], list[tuple[str, Entry]]] = defaultdict(list)
        self._revoked_keys = set()
        if self.root is not None:
            for k, e in manifest.entries(self.store, self.root):
                if k.kind not in LIVE_KINDS:
                    continue
                if e.blob in self._revocations:
                    if k.env == self.env_id:
                        self._revoked_keys.add((k.kind, k.key))
                elif k.env == self.env_id:
                    index[(k.kind, k.key)].append((k.variant, e))
                else:
                    self._foreign[(k.kind, k.key)] = self._foreign.get((k.kind, k.key), 0) + 1
        for variants in index.values():
            variants.sort(key=lambda ve: ve[0])
        return dict(index)

    def _candidates(self, kind: str, key: str) -> list[tuple[str, Entry, bytes | None]]:
        out: list[tuple[str, Entry, bytes | None]] = [
            (k.variant, p.entry, p.data)
            for k, p in (self._pending.items() if self.serve_puts else ())
            if k.kind == kind and k.key == key
        ]
        if self._index is None:
            try:
                self._index = self._build_index()
            except Exception:
                self._index = {}  # an unreadable manifest is one warning, not one per get
                raise
        out.extend((v, e, None) for v, e in self._index.get((kind, key), []))
        return out

    def get(self, backend_key: str) -> bytes | None:
        """The wire value for ``backend_key``, or None (a miss). Never raises."""
        found = self.get_entry(backend_key)
        return None if found is None else found[0]

    def get_entry(self, backend_key: str) -> tuple[bytes, ObjectId] | None:
        """The wire value for ``backend_key`` and the blob it came from, or None (a miss).

        A hit is noted as a read of the blob (for a size-bounded gc). Never raises.
        """
        try:
            return self._get(backend_key)
        except Exception as exc:  # never let cas break a compile
            self.stats.errors += 1
            warn_once("get-error", f"cache lookup failed ({type(exc).__name__}: {exc}); compiling instead")
            return None

    def _get(self, backend_key: str) -> tuple[bytes, ObjectId] | None:
        parsed = parse_backend_key(backend_key)
        if parsed is None:
            return None
        kind, key, _ = parsed
        with self._lock:
            self.stats.gets += 1
            self.check_revocations()
            candidates = self._candidates(kind, key)
            for variant, entry, data in candidates:
                ek = EntryKey(self.env_id, kind, key, variant)
                data = data if data is not None else blobs.read_or_skip(self.store, ek, entry)
                if data is not None:
                    self.stats.hits += 1
                    self.stats.bump(kind, "hits")
                    self.store.maintenance.note_reads((entry.blob,))
                    return wrap(kind, data, entry), entry.blob
            self.stats.miss(kind, key)
            if not candidates and (kind, key) in self._revoked_keys:
                self.stats.revoked += 1
                warn_once("revoked", f"{kind} entry {key[:16]}… is revoked; compiling instead")
            elif not candidates and self._foreign.get((kind, key)):
                self.stats.skipped_other_env += 1
                warn_once(
                    "other-env",
                    f"the store holds {kind} entry {key[:16]}… only for another environment; "
                    f"compiling instead (see `cas explain {key}`)",
                )
        return None

    # -- recording ----------------------------------------------------------------------

    def put(self, backend_key: str, data: bytes) -> None:
        """Buffer what torch stores, for the next :meth:`flush`. Never raises."""
        try:
            self.record(backend_key, data)
        except Exception as exc:  # a put error must never crash compile (torch#AOT)
            self.stats.errors += 1
            warn_once("put-error", f"could not record a compiled artifact ({type(exc).__name__}: {exc})")

    def record(self, backend_key: str, value: bytes) -> None:
        """:meth:`put`, raising what is wrong with the entry: ValueError (or another
        decoding error) for a value not of its kind's shape, a CasError for an entry a
        manifest cannot hold (:func:`cas.manifest.check_entry`; BadEntryKey for its key).
        A refused entry is not buffered, so the next :meth:`flush` commits the others."""
        parsed = parse_backend_key(backend_key)
        if parsed is None or self.branch is None:
            return
        kind, key, cache_id = parsed
        blob, meta = unwrap(kind, value)
        meta.update({"producer": "live", "cache_id": cache_id})
        # The same variant rule as capture (a hash of the guard expressions, read from
        # the pickle without unpickling it), so live and captured entries coincide.
        ek, guards = entry_key(self.env_id, kind, key, blob, "")
        entry = Entry(ObjectId.of(blob), len(blob), guards, meta)
        manifest.check_entry(ek, entry)  # one bad entry must not fail the flush of all
        with self._lock:
            self.stats.puts += 1
            self.stats.bump(kind, "puts")
            # A key torch writes again replaces what it replaced: PGO state evolves, and a
            # compiled graph is only re-put when the one we served did not apply.
            self._pending[ek] = _Pending(entry, blob)

    @property
    def pending(self) -> int:
        return len(self._pending)

    def _side_entries(self, root: ObjectId | None) -> dict[EntryKey, _Pending]:
        """What the remote caches miss, found by torch's own names: the C++ kernels, the
        ISA-probe kernel and the precompiled headers this process asked torch for
        (:mod:`cas.torch.cxx`), the GEMM timing file, and this process's Mega-Cache
        artifacts (FX/AOT entries torch found in its local cache dir are never put to a
        remote cache, yet a new machine needs them). GPU files (Triton kernels, best
        configs) written since the session started are added from the cache dir.

        Entries ``root`` already holds are skipped before their bytes are read. A cache
        with no cache dir (the Redis door's, in the server) has no torch process of its
        own: it records only what was put, and never imports torch for this.
        """
        if self.cache_dir is None:
            return {}
        cpu = cpu_fingerprint()
        out: dict[EntryKey, _Pending] = {}
        tools = cxx.toolchain()
        for found in self._side_files():
            ek = entry_key(self.env_id, found.kind, found.key, b"", cpu)[0]
            if ek in out or (root is not None and manifest.lookup(self.store, root, ek) is not None):
                continue
            try:
                data = found.path.read_bytes()
            except OSError:  # removed under us: nothing to keep
                continue
            meta: dict[str, Any] = {"producer": "live"}
            if found.kind in cxx.TOOLCHAIN_KINDS:
                meta.update(tools)
            out[ek] = _Pending(Entry(ObjectId.of(data), len(data), None, meta), data)
        for art in _process_artifacts():
            ek, guards = entry_key(self.env_id, art.kind, art.key, art.content, cpu)
            if ek in out or ek in self._pending:
                continue
            content: bytes | None = art.content
            kept = manifest.lookup(self.store, root, ek) if root is not None else None
            if kept is not None:
                content = self._merged_unit(ek, kept, art.content) if ek.kind == "precompile" else None
            if content is not None:
                entry = Entry(ObjectId.of(content), len(content), guards, {"producer": "live"})
                out[ek] = _Pending(entry, content)
        return out

    def _merged_unit(self, ek: EntryKey, kept: Entry, unit: bytes) -> bytes | None:
        """The branch's precompiled unit for ``ek`` merged with ``unit``, this process's
        for the same function (:func:`cas.torch._compat.merge_units`: another program
        calling it differently keeps its guarded codes too), or None to keep the branch's
        as it is: nothing new, or a branch the trust policy keeps from torch (the unit is
        code, unpickled to merge)."""
        from cas.trust import check_ref_allowed

        assert self.branch is not None
        try:
            check_ref_allowed(self.store, branch_ref(self.branch))
            return _compat.merge_units(blobs.read(self.store, ek, kept), unit)
        except Exception as exc:
            warn_once("precompile-merge", f"precompiled unit not merged with the branch's ({exc}); "
                                          "the branch's is kept")
            return None

    def _side_files(self) -> list[Found]:
        if self.cache_dir is None:
            return []
        found = list(cxx.tracked_artifacts(self.cache_dir)) + list(cxx.gemm_timings(self.cache_dir))
        if self.cache_dir.is_dir():
            for f in scan(self.cache_dir):
                try:
                    if f.kind in _GPU_SIDE_KINDS and f.path.stat().st_mtime >= self.since:
                        found.append(f)
                except OSError:
                    continue
        return found

    def _tip_root(self) -> ObjectId | None:
        assert self.branch is not None
        ref = branch_ref(self.branch)
        tip = self.store.refs.get(ref)
        if tip is None and self.base is not None:
            try:  # a new record branch starts at the served commit
                self.store.refs.set(ref, self.base, expected=None, who="cas", message="branch for recording")
            except CasError:
                pass  # someone else created it meanwhile: commit on top of theirs
            tip = self.store.refs.get(ref)
        return load_commit(self.store, tip).manifest if tip is not None else None

    def flush(self) -> ObjectId | None:
        """Commit what torch compiled since the last flush to ``branch``.

        Records the buffered remote-cache puts plus the new side files of the cache dir
        (entries the branch already holds are left as they are, but for a precompiled
        unit merged with this process's, :meth:`_merged_unit`). Returns the commit id,
        or None when there was nothing new, no branch, or when called from a forked
        child. Never raises: on a store error the entries stay buffered, one warning.
        """
        with self._lock:
            if self.branch is None or os.getpid() != self._owner_pid:
                return None
            if not self._pending and not _compat.dynamo_imported():
                return None  # torch compiled nothing in this process
            try:
                root = self._tip_root()
                pending = dict(self._pending)
                for k, p in self._side_entries(root).items():
                    pending.setdefault(k, p)
                if not pending:
                    return None
                self.store.objects.write([(ObjType.BLOB, p.data) for p in pending.values()])
                self.store.objects.put_object(self.env)
                oid = commit_changes(
                    self.store,
                    self.branch,
                    {k: p.entry for k, p in pending.items()},
                    self.message,
                    self._commit_metadata(pending),
                )
                mark_local(self.store, oid)
            except Exception as exc:
                self.stats.errors += 1
                warn_once("flush-error", f"could not record compiled artifacts: {exc}")
                return None
            for k in pending:
                self._pending.pop(k, None)
            self.stats.recorded += len(pending)
            return oid

    def watch_autotune(self) -> None:
        """Watch torch autotune from now on (:func:`cas.torch.autotune.watch`, lazily), so
        :meth:`flush_autotune` adds what torch does not keep: each Triton config's time and
        when each GEMM was measured. Only when recording."""
        with self._lock:
            if self.branch is not None and self._unwatch is None:
                self.observed, self._unwatch = autotune.watch(lazily=True)

    def unwatch_autotune(self) -> None:
        """Stop what :meth:`watch_autotune` started (torch's classes as they were)."""
        with self._lock:
            stop, self._unwatch = self._unwatch, None
        if stop is not None:
            stop()

    def flush_autotune(self) -> ObjectId | None:
        """Commit what torch autotuned in the cache dir since the session started as
        autotune records (:func:`cas.torch.autotune.record`): a commit of its own on
        ``branch``, ``autotune: N kernels on <device>``, after :meth:`flush`'s. Returns it,
        or None (nothing measured, no branch, a forked child). Never raises."""
        with self._lock:
            if self.branch is None or self.cache_dir is None or os.getpid() != self._owner_pid:
                return None
            if not _compat.dynamo_imported():
                return None  # torch compiled nothing in this process
            try:
                res = autotune.record(self.store, self.cache_dir, branch=self.branch, since=self.since,
                                      observed=self.observed)
                if res.commit is not None:
                    mark_local(self.store, res.commit)
            except Exception as exc:
                self.stats.errors += 1
                warn_once("autotune-error", f"could not record autotune results: {exc}")
                return None
            self.stats.autotuned += res.added + res.changed
            return res.commit

    def _commit_metadata(self, pending: dict[EntryKey, _Pending]) -> dict[str, Any]:
        spent = sum(int(p.entry.meta.get("time_taken_ms", 0) or 0) for p in pending.values())
        own = {"pid": os.getpid(), "entries": len(pending), "compile_time_ms": spent}
        return commit_metadata("live", self.env_id, pending, {**own, **self.metadata})


def _process_artifacts() -> list[Any]:
    try:
        return process_artifacts()
    except Exception:  # Mega-Cache unavailable: the remote-cache puts still count
        return []


# -- installing into torch -------------------------------------------------------------


_saved: list[tuple[Any, str, Any]] = []


def install(live: LiveCache, *, kinds: Iterable[str] = ("inductor", "aot_autograd", "autotune", "pgo")) -> None:
    """Point torch's remote caches at ``live`` and turn them on.

    Best before the first compile; AOTAutograd's ``get_remote_cache`` is
    ``functools.cache``d, so its cache is cleared here to take effect afterwards too.
    Cache keys stay exactly those of a process without cas
    (:func:`cas.torch._compat.remote_cache_switches`). Everything torch must provide is
    imported before anything is changed: an ``ImportError`` (torch is still importing the
    module, see :func:`cas.torch.enable`) leaves torch as it was.
    The bundled autotune cache is never enabled: on Triton-less installs it crashes
    compile (an AssertionError in ``_AutotuneCacheBundlerImpl._get_backend_hash``, as
    ``backend_hash`` is None without Triton).
    """
    backend = _compat.remote_cache_backend(live.get, live.put)
    wanted = set(kinds)
    switches = [(m, f, v) for m, f, kind, v in _compat.remote_cache_switches() if kind in wanted]
    _compat.clear_aot_remote_cache()  # imports AOTAutograd's cache, before anything changed
    _compat.set_backend_override(backend)
    for module, flag, value in switches:
        if not any(m is module and f == flag for m, f, _ in _saved):
            _saved.append((module, flag, getattr(module, flag)))
        setattr(module, flag, value)
    _compat.clear_aot_remote_cache()


def uninstall() -> None:
    """Undo :func:`install`: torch's remote caches go back to how they were."""
    _compat.set_backend_override(None)
    while _saved:
        module, flag, value = _saved.pop()
        setattr(module, flag, value)
    _compat.clear_aot_remote_cache()
