"""C++ artifacts by torch's own names: kernels, the ISA probe, precompiled headers.

A new machine (empty ``TORCHINDUCTOR_CACHE_DIR`` *and* empty ``TMPDIR``) rebuilds every
C++ file torch needs that is not there: the kernels' ``.so`` files, the ISA-probe kernel
(``cpu_vec_isa``'s dry compile, a ``.so`` in the cache dir) and the precompiled header of
``cpp_prefix.h`` (~150 MB, ~10 s of g++) under torch's *default* cache dir. None of them
travels in Mega-Cache or the remote caches.

Which files a process needs is not guessed from modification times: :func:`track` wraps
``CppBuilder.get_target_file_path``, the one method torch asks for the output path of
every C++ build, before it checks whether the file exists and builds it. Torch asks on
every load, cached or not, so a process that found everything on disk names the same
files as one that built them. What it names is then mapped to entries:

* ``<cache_dir>/<xx>/<name>.so``: ``cpp_kernel`` ``<xx>/<name>.so`` (the ISA probe too);
* ``<header_dir>/<hash>.h.gch``: ``cpp_pch`` ``<hash>.h.gch``.

The header dir is derived exactly as torch derives it
(:func:`cas.torch._compat.header_dir`: ``$TMPDIR/torchinductor_<user>``, plus
``precompiled_headers``), without importing torch, so hydrate stays cheap.

The toolchain (:func:`toolchain`) is what torch folds into these files' names: the
compiler it runs and that compiler's ``-v`` output. It is recorded with every C++ entry so
a machine whose toolchain differs is told which entries will not hit.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from cas.torch import _compat
from cas.torch.hooks import after_import
from cas.torch.kinds import Found
from cas.torch.warn import warn_once

__all__ = [
    "TOOLCHAIN_KINDS",
    "built_here",
    "gemm_timings",
    "header_dir",
    "headers",
    "toolchain",
    "track",
    "tracked",
    "tracked_artifacts",
]

#: Kinds whose file names torch derives from the C++ toolchain.
TOOLCHAIN_KINDS = frozenset({"cpp_kernel", "cpp_pch"})

_lock = threading.Lock()
#: Output path → whether it existed when torch first asked for it (if not, torch built it).
_targets: dict[str, bool] = {}
_installed = False


header_dir = _compat.header_dir
_BUILDER = _compat.CPP_BUILDER


def track() -> None:
    """Record the output path of every C++ build torch asks for in this process.

    Idempotent and cheap: wraps ``CppBuilder.get_target_file_path`` (the class attribute,
    so builders pickled to compile workers are unaffected) as soon as torch imports its
    C++ builder, not before (importing it costs a second; a process that never compiles
    never pays). The wrapper only notes the path.
    """
    global _installed
    with _lock:
        if _installed:
            return
        _installed = True
    after_import(_BUILDER, _wrap)


def _wrap(module: Any) -> None:
    try:
        _compat.wrap_target_file_path(module, _tracking)
    except Exception as exc:  # inside the user's import of torch: never raise (probe() names it)
        warn_once("cxx-track", f"cannot track torch's C++ builds ({exc}); the warmth report misses them")


def _tracking(original: Callable[[Any], str]) -> Callable[[Any], str]:
    @functools.wraps(original)
    def get_target_file_path(self: Any) -> str:
        path = original(self)
        if isinstance(path, str) and path.endswith((".so", ".gch")):
            with _lock:
                if path not in _targets:
                    # Torch asks before it checks and builds: a file missing now is built.
                    _targets[path] = os.path.exists(path)
        return path

    return get_target_file_path


def tracked() -> list[str]:
    """The ``.so`` and ``.gch`` paths torch asked for in this process so far."""
    with _lock:
        return sorted(_targets)


def built_here() -> list[str]:
    """The tracked paths that did not exist when torch first asked: it built them."""
    with _lock:
        return sorted(p for p, existed in _targets.items() if not existed)


def _under(path: Path, root: Path) -> str | None:
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except (ValueError, OSError):
        return None


def tracked_artifacts(cache_dir: Path, pch_dir: Path | None = None) -> Iterator[Found]:
    """The tracked files that exist, as entries: kernels of ``cache_dir`` and headers of
    ``pch_dir`` (default: :func:`header_dir`). Headers being built are left out."""
    pch_root = pch_dir if pch_dir is not None else header_dir()
    for target in tracked():
        path = Path(target)
        if not path.is_file():
            continue
        rel = _under(path, cache_dir)
        if rel is not None and rel.endswith(".so") and rel.count("/") == 1:
            yield Found("cpp_kernel", rel, path)
        elif _under(path, pch_root) == path.name and _complete(path):
            yield Found("cpp_pch", path.name, path)


def _complete(gch: Path) -> bool:
    """False while torch (holding its lock for this header) may still be writing it."""
    from filelock import FileLock, Timeout

    lock_file = gch.parent / "locks" / f"{gch.name.split('.', 1)[0]}.lock"
    if not lock_file.exists():
        return True
    try:
        with FileLock(str(lock_file), timeout=0):
            return True
    except Timeout:
        return False
    except OSError:
        return True


def headers(pch_dir: Path | None = None) -> Iterator[Found]:
    """Every finished precompiled header in ``pch_dir`` (default: torch's), by torch's name.

    For capture from a cache dir after the fact, when no process was tracked: the names
    are keyed by compiler, flags and header content, so a header that does not fit a
    machine is simply never looked up there.
    """
    root = pch_dir if pch_dir is not None else header_dir()
    if not root.is_dir():
        return
    for f in sorted(root.iterdir()):
        if f.name.endswith(".h.gch") and f.is_file() and _complete(f):
            yield Found("cpp_pch", f.name, f)


@functools.cache
def toolchain() -> dict[str, str]:
    """The C++ toolchain as torch sees it: the compiler it runs (``cxx``), a short hash of
    that compiler's ``-v`` output (``cxx_id``) and its version line (``cxx_version``).
    Torch hashes the first two into C++ file names. ``{}`` when there is no compiler.

    Uses torch's own functions when torch's C++ builder is loaded; otherwise derives the
    same as torch does by default (``$CXX``, else ``g++``) without importing it (a second).
    """
    module = sys.modules.get(_BUILDER)
    try:
        if module is not None:
            cxx, info = _compat.cpp_compiler(module)
        else:
            from cas.config import env_value

            cxx = env_value("CXX") or "g++"
            info = _version_info(cxx)
    except Exception:  # no compiler: torch cannot build C++ here either
        return {}
    if not info:
        return {}
    found = re.search(r"(?:^|_)([^_]*version [^_]+)", info)
    return {"cxx": cxx, "cxx_id": hashlib.sha256(info.encode()).hexdigest()[:16],
            "cxx_version": found.group(1).strip() if found else ""}


def _version_info(cxx: str) -> str:
    """``get_compiler_version_info`` of torch's cpp_builder, without torch."""
    env = dict(os.environ, LC_ALL="C")
    for flag in ("-v", "--version"):
        try:
            out = subprocess.run([cxx, flag], capture_output=True, env=env, timeout=30, check=True)
        except (OSError, subprocess.SubprocessError):
            continue
        text = (out.stdout + out.stderr).decode(errors="replace")
        return text.replace("\r", "_").replace("\n", "_")
    return ""


def gemm_timings(cache_dir: Path) -> Iterator[Found]:
    """The GEMM timing file torch keeps for this system in ``cache_dir``, if it exists
    (``cache/<system hash>``, the name ``CacheBase.get_local_cache_path`` gives it)."""
    try:
        name = _compat.gemm_system_hash()
    except Exception:  # torch moved it: the cache dir scan of capture still finds it
        return
    path = cache_dir / "cache" / name
    if path.is_file():
        yield Found("gemm_timing", name, path)
