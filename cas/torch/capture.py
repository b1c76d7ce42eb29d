"""Capture: put every artifact a process or cache dir produced into the store and commit.

Sources, in order (the first artifact of an entry key wins, because torch's bytes are not
deterministic and a re-compile must not churn the manifest):

1. the in-process Mega-Cache (``torch.compiler.save_cache_artifacts()``), split per
   artifact by :mod:`cas.torch.megacache` — inductor, aot_autograd, autotune, pgo,
   precompile;
2. the torch cache dir, for what Mega-Cache misses — C++ kernels, GEMM timings, Triton
   kernels and ``.best_config`` records — and for the FX/AOT entries of other processes
   that compiled into the same dir.

Entries already on the branch are kept as they are; only new keys are committed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cas import manifest
from cas.codec import ObjType
from cas.digest import ObjectId
from cas.history import commit_changes
from cas.objects import Entry, EntryKey, Env
from cas.refs import branch_ref, load_commit, resolve
from cas.store import Store
from cas.torch import _compat, blobs, cxx, kinds, megacache
from cas.torch.artifacts import commit_metadata, entry_key
from cas.torch.autotune import RecordResult, record
from cas.torch.env import cpu_fingerprint, current_env

__all__ = [
    "Artifact",
    "CaptureResult",
    "capture",
    "commit_artifacts",
    "export_megacache",
    "import_megacache",
    "torch_cache_dir",
    "torch_pch_dir",
]

Artifact = megacache.Artifact


@dataclass
class CaptureResult:
    """What a capture stored: the new commit (None if nothing was new) and counts."""

    commit: ObjectId | None
    env: ObjectId
    added: int = 0
    already_stored: int = 0
    bytes_added: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)
    #: The autotune records committed after the capture (:func:`capture` only).
    autotune: RecordResult | None = None

    def to_dict(self) -> dict[str, Any]:
        out = {
            "commit": str(self.commit) if self.commit else None,
            "env": str(self.env),
            "added": self.added,
            "already_stored": self.already_stored,
            "bytes_added": self.bytes_added,
            "by_kind": dict(self.by_kind),
        }
        if self.autotune is not None:
            out["autotune"] = self.autotune.to_dict()
        return out


#: Torch's cache dir for this process, and where it keeps precompiled headers (under its
#: *default* cache dir): :mod:`cas.torch._compat`'s, named here for capture's callers.
torch_cache_dir = _compat.torch_cache_dir
torch_pch_dir = _compat.header_dir


def process_artifacts() -> list[Artifact]:
    """This process's Mega-Cache artifacts (every kind torch recorded, hits included)."""
    saved = _compat.save_cache_artifacts()
    return megacache.decode(saved) if saved else []


def dir_artifacts(cache_dir: Path, pch_dir: Path | None = None) -> list[Artifact]:
    """Every artifact in a torch cache dir, read into memory, plus the finished
    precompiled headers in ``pch_dir`` (all of them: each is named by torch for the
    compiler, flags and header it fits, and travels once per CPU, see
    :mod:`cas.torch.cxx`)."""
    found_all = list(kinds.scan(cache_dir))
    if pch_dir is not None:
        found_all += cxx.headers(pch_dir)
    out = []
    for found in found_all:
        try:
            content = found.path.read_bytes()
        except OSError:  # deleted under us by torch or a cleaner: nothing to keep
            continue
        out.append(Artifact(found.kind, found.key, content))
    return out


def _tip_root(store: Store, branch: str) -> ObjectId | None:
    tip = store.refs.get(branch_ref(branch))
    return load_commit(store, tip).manifest if tip is not None else None


def commit_artifacts(
    store: Store,
    artifacts: Iterable[Artifact],
    *,
    branch: str = "main",
    message: str,
    metadata: Mapping[str, Any] | None = None,
    env: Env | None = None,
    author: str | None = None,
) -> CaptureResult:
    """Store ``artifacts`` as entries of ``env`` (default: this process's) and commit.

    Keys already on ``branch`` (or earlier in ``artifacts``) are left alone. Returns a
    result whose ``commit`` is None when nothing was new.
    """
    env = env or current_env()
    env_id = store.objects.put_object(env)
    cpu = cpu_fingerprint()
    tools: dict[str, str] | None = None
    root = _tip_root(store, branch)
    chosen: dict[EntryKey, tuple[Artifact, str | None]] = {}
    result = CaptureResult(commit=None, env=env_id)
    for art in artifacts:
        ek, guards = entry_key(env_id, art.kind, art.key, art.content, cpu)
        if ek in chosen:
            continue
        if root is not None and manifest.lookup(store, root, ek) is not None:
            result.already_stored += 1
            continue
        chosen[ek] = (Artifact(art.kind, ek.key, art.content), guards)
    if not chosen:
        return result
    blobs = store.objects.write([(ObjType.BLOB, a.content) for a, _ in chosen.values()])
    changes: dict[EntryKey, Entry | None] = {}
    spent_ms = 0
    for (ek, (art, guards)), oid in zip(chosen.items(), blobs, strict=True):
        ms = kinds.compile_ms(ek.kind, art.content)
        meta: dict[str, Any] = {"compile_ms": ms} if ms is not None else {}
        if ek.kind in cxx.TOOLCHAIN_KINDS:
            tools = cxx.toolchain() if tools is None else tools
            meta.update(tools)
        changes[ek] = Entry(oid, len(art.content), guards, meta)
        # Inductor entries only: an AOT entry's time already includes its FX graphs'.
        spent_ms += ms if ms is not None and ek.kind == "inductor" else 0
        result.by_kind[ek.kind] = result.by_kind.get(ek.kind, 0) + 1
        result.bytes_added += len(art.content)
    result.added = len(changes)
    meta = commit_metadata("capture", env_id, changes,
                           {"compile_seconds_recorded": round(spent_ms / 1000, 3), **(metadata or {})})
    result.commit = commit_changes(store, branch, changes, message, meta, author=author)
    return result


def capture(
    store: Store,
    cache_dir: str | Path | None = None,
    *,
    branch: str = "main",
    message: str = "capture",
    megacache: bool = True,
    pch: bool = True,
    compile_seconds: float | None = None,
    author: str | None = None,
    autotune: bool = True,
) -> CaptureResult:
    """Capture this process's artifacts and those in ``cache_dir`` into one commit.

    With ``autotune``, what torch measured while autotuning (the GEMM timing file,
    ``.best_config`` files) is then committed as autotune records, in a commit of its
    own on ``branch`` (``autotune: N kernels on <device>``, :func:`cas.torch.autotune.record`;
    none when nothing was tuned or all is recorded already): ``result.autotune``.

    ``megacache`` adds the in-process Mega-Cache artifacts (needs the compiling process;
    the CLI, a separate process, reads the cache dir only). ``pch`` adds torch's
    precompiled headers built meanwhile (``cpp_pch``: ~20 MB each once compressed, and
    ~10 s of g++ saved per new machine). ``compile_seconds`` is recorded in the commit
    metadata when known.
    """
    cdir = Path(cache_dir) if cache_dir is not None else torch_cache_dir()
    arts = process_artifacts() if megacache else []
    arts += dir_artifacts(cdir, torch_pch_dir() if pch else None)
    meta: dict[str, Any] = {"producer": "capture", "cache_dir": str(cdir)}
    if compile_seconds is not None:
        meta["compile_seconds"] = round(compile_seconds, 3)
    result = commit_artifacts(
        store, arts, branch=branch, message=message, metadata=meta, author=author
    )
    if autotune:
        result.autotune = record(store, cdir, branch=branch, author=author)
    return result


# -- Mega-Cache files: import a container as a commit, export a ref as a container ---------


def import_megacache(
    store: Store,
    data: bytes,
    *,
    branch: str = "main",
    message: str = "import mega-cache",
    env: Env | None = None,
) -> CaptureResult:
    """Split a ``save_cache_artifacts()`` container into entries of ``env`` (default:
    this process's) and commit them on ``branch``.

    The container carries no env of its own, so it is filed under the env of the process
    importing it: import on the machine (and torch build) that produced it.
    """
    arts = [a for a in megacache.decode(data) if a.kind in megacache.MEGACACHE_KINDS]
    return commit_artifacts(
        store,
        arts,
        branch=branch,
        message=message,
        metadata={"producer": "import-megacache", "artifacts": len(arts)},
        env=env,
    )


def export_megacache(store: Store, ref: str, *, env: Env | None = None) -> tuple[bytes, dict[str, int]]:
    """The Mega-Cache container of the entries of ``ref`` that match ``env`` (default:
    this process's), and the count per kind. Entries of other envs are never exported,
    and every blob is hash-checked first.
    """
    env_id = (env or current_env()).id
    root = load_commit(store, resolve(store, ref)).manifest
    arts: list[Artifact] = []
    counts: dict[str, int] = {}
    for ek, entry in manifest.entries(store, root):
        if ek.env != env_id or ek.kind not in megacache.MEGACACHE_KINDS:
            continue
        arts.append(Artifact(ek.kind, ek.key, blobs.read(store, ek, entry)))
        counts[ek.kind] = counts.get(ek.kind, 0) + 1
    return megacache.encode(arts), counts
