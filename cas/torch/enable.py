"""``cas.torch.enable()``: one call that makes this process start warm from a store.

It opens the store, checks the trust policy for the ref, hydrates the ref's entries for
this env into torch's cache dir (so torch's own lookup hits them, C++ kernels included),
installs the live backend for whatever hydrate did not cover, and, with ``record``, buffers
what torch newly compiles and commits it at exit (or on :meth:`Session.flush`), followed by
what it autotuned meanwhile as autotune records, in a commit of their own.

Never worse than no cache: a missing, locked or corrupt store, a refused ref or any
other failure costs one :class:`~cas.torch.warn.CasWarning` and leaves torch compiling as
if cas were not there. ``enable`` itself never raises.
"""

from __future__ import annotations

import atexit
import json
import os
import sys
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cas.digest import ObjectId
from cas.errors import CasError, PolicyError, RefNotFound
from cas.store import Store
from cas.torch import _compat
from cas.torch.hooks import after_import
from cas.torch.live import LiveCache, install, uninstall
from cas.torch.prewarm import Prewarm
from cas.torch.prewarm import start as start_checks
from cas.torch.warn import warn_once

__all__ = ["SAME_BRANCH", "Session", "active_session", "bootstrap_from_env", "enable"]

#: ``record=SAME_BRANCH``: record into ``ref`` itself if it is a branch (or does not
#: exist yet); if it names a tag, a remote-tracking ref or a commit, do not record.
SAME_BRANCH = "@ref"

_lock = threading.Lock()
_active: Session | None = None
_atexit_registered = False


@dataclass
class Session:
    """The state of cas in this process: what was hydrated, served and recorded."""

    store_path: str
    ref: str
    record: str | None
    store: Store | None = None
    live: LiveCache | None = None
    commit: ObjectId | None = None
    hydrated: dict[str, Any] | None = None
    policy: str | None = None
    commits: list[ObjectId] = field(default_factory=list)
    closed: bool = False
    owns_store: bool = True
    installed: bool = False
    #: What the recorded commits name as their program (``cas run`` passes the script).
    program: str | None = None
    #: torch's C++ load checks, run early (:mod:`cas.torch.prewarm`); None when not started.
    prewarm: Prewarm | None = None

    @property
    def enabled(self) -> bool:
        """False when the store could not be used (torch then compiles without cas)."""
        return self.store is not None

    def flush(self) -> ObjectId | None:
        """Commit what torch compiled since the last flush to ``record``, then what it
        autotuned as records in a commit of their own; never raises. Returns the first."""
        if self.live is None:
            return None
        try:  # units are kept in memory until asked for; capture reads the cache dir
            _compat.save_precompiled()
        except Exception as exc:
            warn_once("precompile-save", f"could not save precompiled units: {exc}")
        for reason in _compat.unrecorded_units():
            warn_once(f"precompile-unrecorded:{reason}", f"precompiled unit not recorded ({reason}); "
                                                         "its function traces on the next machine")
        oid = self.live.flush()
        tuned = self.live.flush_autotune()
        self.commits += [c for c in (oid, tuned) if c is not None]
        return oid

    def stats(self) -> dict[str, Any]:
        """What this session did, as plain data (for ``cas run`` and tests)."""
        out: dict[str, Any] = {
            "enabled": self.enabled,
            "store": self.store_path,
            "ref": self.ref,
            "commit": str(self.commit) if self.commit else None,
            "record": self.record,
            "policy": self.policy,
            "hydrated": self.hydrated,
            "commits": [str(c) for c in self.commits],
            "pending": self.live.pending if self.live else 0,
            "env": self.live.env_id.hex if self.live else None,
            "prewarm": dict(self.prewarm.report) if self.prewarm else None,
        }
        if self.live is not None:
            out["live"] = self.live.stats.to_dict()
        return out

    def warmth(self) -> dict[str, Any]:
        """How warm this process's start was, so far: what torch built or compiled
        (:func:`cas.torch.warmth.observed`) and what hydrate predicted it would."""
        from cas.torch import cxx
        from cas.torch.warmth import observed, precompiled

        seen = _compat.cache_counters(("inductor", "aot_autograd", "dynamo_cache", "frames"))
        refused = _compat.refused_units()
        out = observed(cxx.built_here(), seen, refused).to_dict()
        if _compat.precompile_on():
            out["precompile"] = precompiled(seen, refused)
        out["predicted"] = (self.hydrated or {}).get("warmth") or {}
        out["counters"] = seen
        return out

    def close(self) -> None:
        """Flush, take the live backend out of torch, and close the store."""
        global _active
        if self.closed:
            return
        self.flush()
        if self.live is not None:
            self.live.unwatch_autotune()
        if self.installed:
            uninstall()
        if self.store is not None and self.owns_store:
            self.store.close()
        self.closed = True
        with _lock:
            if _active is self:
                _active = None


def active_session() -> Session | None:
    """The session :func:`enable` installed in this process, if any."""
    return _active


def _open_store(store: Store | str | os.PathLike[str] | None, create: bool) -> tuple[Store, str]:
    if isinstance(store, Store):
        return store, str(store.path)
    from cas.config import default_store_path

    path = Path(store) if store is not None else default_store_path()
    return (Store.init(path) if create else Store(path)), str(path)


def enable(
    store: Store | str | os.PathLike[str] | None = None,
    ref: str = "main",
    record: str | None = None,
    *,
    hydrate: bool = True,
    live: bool = True,
    cache_dir: str | os.PathLike[str] | None = None,
    message: str | None = None,
    program: str | None = None,
    precompile: bool = False,
) -> Session:
    """Serve ``ref`` of ``store`` to torch.compile in this process; record into ``record``.

    ``store``: a Store, a path, or None for the default store (``$CAS_DIR``). With
    ``record``, a missing store is created; ``record=SAME_BRANCH`` records into ``ref``
    when it is a branch. Call before the first ``torch.compile`` call
    runs (a later call still works, but graphs compiled before it were not served).
    Enabling again replaces the previous session (which is flushed first). ``program``
    is named in the metadata of what is recorded (``cas coverage`` groups by it).
    ``precompile``: load and record dynamo's precompiled units (docs/torch.md, "Precompiled
    start"); it must be on before the first ``torch.compile`` call of a function. Off by
    default: torch then bundles AOTAutograd entries under other keys, which a process
    without it does not find.
    """
    global _active
    with _lock:
        previous = _active
    if previous is not None:
        previous.close()
    session = Session(store_path=str(store) if store is not None else "", ref=ref, record=record,
                      program=program)
    after_import(_compat.DYNAMO, _start_precompile if precompile else _guard_units)
    try:
        _start(session, store, hydrate=hydrate, live=live, cache_dir=cache_dir, message=message)
    except Exception as exc:  # enable never raises: torch compiles without cas
        warn_once("enable", f"cannot use the store ({exc}); compiling without cas")
        if session.installed:
            uninstall()
        session.live = None
    with _lock:
        _active = session
    if record is not None:
        _register_atexit()
    return session


def _start(
    session: Session,
    store: Store | str | os.PathLike[str] | None,
    *,
    hydrate: bool,
    live: bool,
    cache_dir: str | os.PathLike[str] | None,
    message: str | None,
) -> None:
    from cas.refs import load_commit
    from cas.torch import cxx
    from cas.torch.env import current_env
    from cas.trust import check_ref_allowed

    cxx.track()  # the C++ files torch will ask for, by name, for record and the summary

    try:
        opened, session.store_path = _open_store(store, create=session.record is not None)
    except CasError as exc:
        warn_once("store", f"{exc}; compiling without cas")
        return
    session.store = opened
    session.owns_store = not isinstance(store, Store)
    if session.record == SAME_BRANCH:
        session.record = _branch_of(opened, session.ref)
    root = None
    try:
        verdict = check_ref_allowed(opened, session.ref)
        session.commit, session.policy = verdict.commit, verdict.reason
        root = load_commit(opened, verdict.commit).manifest
    except RefNotFound:
        if session.record is None:  # recording into a new branch is the normal first run
            warn_once("ref", f"no ref {session.ref!r} in the store at {session.store_path}; compiling normally")
    except PolicyError as exc:
        session.policy = "refused"
        warn_once("policy", f"{exc}; compiling without its artifacts")
    except CasError as exc:
        warn_once("ref", f"cannot read {session.ref!r} from the store ({exc}); compiling normally")
    env = current_env()
    if hydrate and session.commit is not None:
        _hydrate(session, opened, cache_dir)
        if _serves_cpu_code(session, env.fields.get("device")):
            # After the header writer's hook (registered by _hydrate): headers come first.
            after_import(_compat.DYNAMO, lambda _dynamo: _start_prewarm(session))
    if live:
        meta = {"ref": session.ref, **({"program": session.program} if session.program else {})}
        session.live = LiveCache(
            opened,
            env,
            root=root,
            branch=session.record,
            message=message or f"live: compiled while serving {session.ref}",
            metadata=meta,
            base=session.commit,
            cache_dir=cache_dir if cache_dir is not None else _compat.torch_cache_dir(),
            # What this process records is served only when it records into the ref it
            # reads: a tag (or another branch) serves exactly its own commit.
            serve_puts=session.record is not None and session.record == _branch_of(opened, session.ref),
        )
        # Installed once torch imports dynamo (before its first compile), so a program
        # that never compiles never imports the dynamo/inductor stack for cas.
        after_import(_compat.DYNAMO, lambda dynamo: _install(session, dynamo))


def _serves_cpu_code(session: Session, device: str | None) -> bool:
    """Whether hydrate found entries of this env on a CPU (torch loads C++ kernels)."""
    hydrated = session.hydrated or {}
    return device == "cpu" and bool(hydrated.get("written") or hydrated.get("present"))


def _start_prewarm(session: Session) -> None:
    if session.closed or session.prewarm is not None:
        return
    session.prewarm = start_checks()  # never raises


def _guard_units(dynamo: Any) -> None:
    del dynamo
    try:
        _compat.guard_units_if_on()
    except Exception as exc:  # inside the user's import of torch._dynamo: never raise
        warn_once("precompile", f"cannot guard precompiled units ({exc})")


def _start_precompile(dynamo: Any) -> None:
    try:
        _compat.start_precompile(dynamo)
    except Exception as exc:  # inside the user's import of torch._dynamo: never raise
        warn_once("precompile", f"cannot use precompiled units ({exc}); tracing as usual")


def _branch_of(store: Store, ref: str) -> str | None:
    from cas.refs import HEADS, find_ref, resolve_object

    found = find_ref(store, ref)
    if found is not None:
        return found[0][len(HEADS) :] if found[0].startswith(HEADS) else None
    try:
        resolve_object(store, ref)  # a commit id or ref~N: not a branch to record into
        return None
    except CasError:
        return ref  # no such ref yet: the first run creates the branch


def _install(session: Session, dynamo: Any) -> None:
    """Install the live backend now that torch imported dynamo; or, when dynamo was
    imported from inside a module of inductor or functorch still being imported (a
    program whose first torch import is ``torch._inductor.codecache``, say), at the start
    of the first compile, when those modules are complete."""
    if session.live is None or session.closed:
        return
    try:
        install(session.live)
        session.installed = True
    except ImportError:  # a torch module is half imported: install() changed nothing
        if not _compat.on_compile_start(dynamo, _Retry(session)):
            warn_once("install", "cannot serve torch's caches (dynamo has no compile-start callback); "
                                 "compiling without the live backend")
    except Exception as exc:  # inside the user's import of torch._dynamo: never raise
        warn_once("install", f"cannot serve torch's caches ({exc}); compiling without the live backend")
    try:  # recording does not need the backend: flush reads the cache dir
        session.live.watch_autotune()
    except Exception as exc:
        warn_once("autotune-watch", f"cannot watch autotune ({exc}); records get no candidate times")


class _Retry:
    """dynamo's compile-start callback: install the live backend on the first call."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.done = False

    def __call__(self, *_: Any) -> None:
        session = self.session
        if self.done or session.live is None or session.closed:
            return
        self.done = True
        try:
            install(session.live)
            session.installed = True
        except Exception as exc:  # inside torch's compile: never raise
            warn_once("install", f"cannot serve torch's caches ({exc}); compiling without the live backend")


def _hydrate(session: Session, store: Store, cache_dir: str | os.PathLike[str] | None) -> None:
    from cas.torch.hydrate import hydrate

    assert session.commit is not None
    try:
        # hydrate warns about skipped entries; a process gets one warning in all.
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            # Headers (~150 MB) are written while the program goes on, under torch's own
            # lock for each: torch waits for one it reaches; one never reached is dropped
            # at exit. Writing starts once torch imports dynamo or inductor (the program
            # is about to compile; tracing comes before any header is needed), so a
            # program that does not compile spends nothing on them.
            result = hydrate(store, session.commit.hex, Path(cache_dir) if cache_dir is not None else None,
                             background="later")
    except Exception as exc:  # hydrate is an optimisation; the live path still serves
        warn_once("hydrate", f"hydrate failed ({exc}); serving through the live backend only")
        return
    if result.pending:  # torch builds headers from inductor, which compiles reach through dynamo
        for module in (_compat.DYNAMO, _compat.INDUCTOR):
            after_import(module, lambda _module: result.start())
    if caught:  # a refused blob is reported once (cas.torch.blobs), and counted in the result
        unused = max(len(caught), result.corrupt)
        warn_once(
            "corrupt-blob",
            f"{unused} entr{'y' if unused == 1 else 'ies'} of {session.ref} could not be "
            f"used ({caught[0].message}); compiling those instead (run `cas fsck`)",
        )
    session.hydrated = {
        "written": result.written,
        "present": result.present,
        "skipped_other_env": result.skipped_other_env,
        "corrupt": result.corrupt,
        "pending": result.pending,
        "warmth": result.warmth,
    }


def _register_atexit() -> None:
    global _atexit_registered
    with _lock:
        if _atexit_registered:
            return
        _atexit_registered = True
    atexit.register(_at_exit)


def _at_exit() -> None:
    session = _active
    if session is not None and not session.closed:
        session.flush()


# -- bootstrap for `cas run` -------------------------------------------------------------

#: Environment variables ``cas run`` sets for the program it starts.
RUN_VARS = ("CAS_RUN_STORE", "CAS_RUN_REF", "CAS_RUN_RECORD", "CAS_RUN_STATS", "CAS_RUN_HYDRATE",
            "CAS_RUN_PROGRAM")


def bootstrap_from_env() -> Session | None:
    """Enable cas from the ``CAS_RUN_*`` variables (``cas run``'s sitecustomize).

    Writes the session's stats and torch's cache counters as one JSON line appended to
    ``CAS_RUN_STATS`` at exit, for ``cas run`` to summarise. Never raises.
    """
    from cas.config import env_value

    try:
        store = env_value("CAS_RUN_STORE")
        if not store or _is_compile_worker():
            return None
        session = enable(
            store,
            ref=env_value("CAS_RUN_REF") or "main",
            record=env_value("CAS_RUN_RECORD") or None,
            hydrate=env_value("CAS_RUN_HYDRATE") == "1",
            program=env_value("CAS_RUN_PROGRAM") or None,
            precompile=env_value("CAS_RUN_PRECOMPILE") == "1",
        )
        stats_path = env_value("CAS_RUN_STATS")
        if stats_path:
            # Registered after enable's flush handler, so it runs first (LIFO): flush here.
            atexit.register(_write_stats, session, stats_path)
        return session
    except Exception as exc:
        warn_once("bootstrap", f"cas run bootstrap failed ({exc}); compiling without cas")
        return None


def _is_compile_worker() -> bool:
    # Inductor's compile workers are python processes of their own that import torch;
    # they compile nothing cas could serve, and computing the env (torch_key hashes all
    # of torch) in each would steal seconds of CPU from the real compile.
    main = os.path.normpath(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return main.endswith(os.path.join("compile_worker", "__main__.py"))


def _combined(warmth: dict[str, Any]) -> dict[str, Any]:
    """This process's warmth as ``cas run`` sums several processes' (its summary takes
    it as it is when the program ran one torch process, without importing cas.torch)."""
    from cas.torch.warmth import combine

    out = combine([warmth]).to_dict()
    out["predicted"] = combine([warmth.get("predicted") or {}]).to_dict()
    return out


def _write_stats(session: Session, path: str) -> None:
    try:
        session.flush()
        stats = session.stats()
        stats["pid"] = os.getpid()
        stats["warmth"] = session.warmth()
        stats["counters"] = stats["warmth"].pop("counters")
        # Only where Inductor compiled: a program that never did does not pay for the probe.
        stats["compat"] = _compat.report() if _compat.inductor_loaded() else None
        stats["warmth_combined"] = _combined(stats["warmth"])
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(stats, default=str) + "\n")
    except Exception:  # exit path: nothing sensible left to report to
        pass
