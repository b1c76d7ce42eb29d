"""Artifact kinds, and how each maps between files in a torch cache dir and entries.

Each kind knows two things: where torch keeps its artifacts in a cache dir (so capture can
find them) and where torch looks them up (so hydrate can put them back). Paths are always
relative to the cache dir; nothing here imports torch.

=============  =========================================  ==============================
kind           in the cache dir                           entry key / variant
=============  =========================================  ==============================
inductor       fxgraph/<k[1:3]>/<k>/<file>                FX key / guards hash
aot_autograd   aotautograd/<k>/<file>                     AOT key / guards hash
autotune       <xx>/<hash>.best_config                    ``<xx>/<hash>.best_config``
pgo            dynamo/code_state_<k>.pkl                  sanitized PGO key
precompile     dynamo/<k>/entry                           source id
cpp_kernel     <xx>/<name>.so                             ``<xx>/<name>.so`` / CPU print
gemm_timing    cache/<system hash>                        system hash / CPU print
triton_kernel  triton/<dev>/<hash>/<file>                 ``<dev>/<hash>/<file>``
cpp_pch        (default cache dir) precompiled_headers/   ``<name>.h.gch`` / CPU print
=============  =========================================  ==============================

``cpp_pch`` is the one kind outside ``TORCHINDUCTOR_CACHE_DIR``: torch keeps precompiled
headers under its *default* cache dir (``$TMPDIR/torchinductor_<user>``) and builds the
one for ``cpp_prefix.h`` (~150 MB, ~10 s of g++) in every new process that loads a CPU
kernel, even when the kernel's ``.so`` is cached. A new machine without it compiles.

Several files under one FX or AOT key are guard variants (dynamic shapes): each becomes
its own entry, told apart by a hash of its guard expressions, which is deterministic,
unlike the file name (a hash of the non-deterministic pickled bytes). C++ kernels and GEMM
timings are built or measured for this very CPU (``-march=native``), so their variant is
the CPU fingerprint and hydrate writes them only onto the same CPU model.
"""

from __future__ import annotations

import base64
import hashlib
import json
import pickletools
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cas import entrykeys
from cas.errors import BadEntryKey

__all__ = [
    "ALL_KINDS",
    "CPU_BOUND_KINDS",
    "Found",
    "PCH_KINDS",
    "file_mode",
    "compile_ms",
    "guards_of",
    "merge_gemm_timings",
    "path_for",
    "place",
    "scan",
    "variant_for",
]

ALL_KINDS = (
    "inductor",
    "aot_autograd",
    "autotune",
    "pgo",
    "precompile",
    "cpp_kernel",
    "gemm_timing",
    "triton_kernel",
    "cpp_pch",
)
#: Kinds whose bytes are only valid on the CPU model that produced them.
CPU_BOUND_KINDS = frozenset({"cpp_kernel", "gemm_timing", "cpp_pch"})
#: Kinds written under torch's precompiled-header dir rather than the cache dir.
PCH_KINDS = frozenset({"cpp_pch"})
#: Kinds whose content is a pickle carrying guard expressions.
GUARDED_KINDS = frozenset({"inductor", "aot_autograd"})

_TWO = re.compile(r"^[a-z0-9_]{2}$")
_PGO_UNSAFE = re.compile(r'[<>:"/\\|?*]')


@dataclass(frozen=True)
class Found:
    """An artifact found in a cache dir: kind, torch's key, and the file holding it."""

    kind: str
    key: str
    path: Path


def torch_file_hash(content: bytes) -> str:
    """The file name torch gives an FX/AOT entry: ``sha256_hash`` of its content."""
    return base64.b32encode(hashlib.sha256(content).digest())[:51].decode().lower()


def pgo_key(key: str) -> str:
    """PGO keys as torch puts them in file names (the form capture stores)."""
    return _PGO_UNSAFE.sub("_", key)


def _field_values(content: bytes, name: str) -> list[object]:
    """The values stored right after each field ``name`` in a pickle, without unpickling.

    Walks the opcodes (nothing is executed): after a field name comes its value, a
    string, an int or None; anything else (a nested object) is skipped.
    """
    out: list[object] = []
    # An ASCII name is in the bytes of any pickle that holds it, whatever the protocol: a
    # value without it (most of a Redis door's SETs in the benchmark) is not walked.
    if name.encode() not in content:
        return out
    try:
        ops = list(pickletools.genops(content))
    except Exception:  # not a pickle we can walk: nothing known
        return out
    for i, (_, arg, _) in enumerate(ops):
        if arg != name:
            continue
        for op, value, _ in ops[i + 1 : i + 4]:
            if op.name == "MEMOIZE":
                continue
            if op.name == "NONE":
                out.append(None)
            elif isinstance(value, (str, int)) and not isinstance(value, bool):
                out.append(value)
            break
    return out


def guards_of(content: bytes) -> list[str | None]:
    """The ``guards_expr`` values in a pickled FX/AOT entry (None: static shapes)."""
    return [v for v in _field_values(content, "guards_expr") if v is None or isinstance(v, str)]


def compile_ms(kind: str, content: bytes) -> int | None:
    """Milliseconds torch spent producing an FX/AOT entry, as recorded inside it."""
    names = {"inductor": ("_time_taken_ns",),
             "aot_autograd": ("forward_time_taken_ns", "backward_time_taken_ns")}.get(kind, ())
    total = [v for n in names for v in _field_values(content, n)[:1] if isinstance(v, int)]
    return sum(total) // 1_000_000 if total else None


def variant_for(kind: str, content: bytes, cpu: str) -> tuple[str, str | None]:
    """The (variant, guards) of an artifact of ``kind`` with bytes ``content``."""
    if kind in CPU_BOUND_KINDS:
        return f"cpu-{cpu}", None
    if kind in GUARDED_KINDS:
        guards = guards_of(content)
        if not any(g is not None for g in guards):
            return "", None
        digest = hashlib.sha256(json.dumps(guards).encode()).hexdigest()[:16]
        return f"g-{digest}", next(g for g in guards if g is not None)
    return "", None


def path_for(kind: str, key: str, content: bytes) -> str:
    """Where torch looks up an artifact of ``kind`` and ``key``, relative to the cache dir."""
    if kind == "inductor":
        return f"fxgraph/{key[1:3]}/{key}/{torch_file_hash(content)}"
    if kind == "aot_autograd":
        return f"aotautograd/{key}/{torch_file_hash(content)}"
    if kind == "pgo":
        return f"dynamo/code_state_{pgo_key(key)}.pkl"
    if kind == "precompile":
        return f"dynamo/{key}/entry"
    if kind == "gemm_timing":
        return f"cache/{key}"
    if kind == "triton_kernel":
        return f"triton/{key}"
    if kind in ("autotune", "cpp_kernel", "cpp_pch"):
        return key
    raise ValueError(f"unknown artifact kind {kind!r}")


def place(base: Path, kind: str, key: str, content: bytes) -> Path:
    """``base / path_for(...)``, refused (BadEntryKey) unless the key matches its kind's
    grammar and the path, symlinks resolved, lies inside ``base``."""
    entrykeys.check(kind, key)
    path = base / path_for(kind, key, content)
    if not path.resolve().is_relative_to(base.resolve()):
        raise BadEntryKey(f"{kind} key {key[:80]!r} resolves outside {base}")
    return path


def file_mode(path: Path) -> int:
    """The mode torch gives a file it writes there: 0o666 less the umask, 0o777 for a
    shared library (it is built by the compiler, which makes it executable)."""
    return (0o777 if path.suffix == ".so" else 0o666) & ~_UMASK


def _umask() -> int:
    # Read, not set-and-restore: os.umask() changes it for every thread meanwhile.
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o022


_UMASK = _umask()


def _files(d: Path) -> list[Path]:
    return sorted(p for p in d.iterdir() if p.is_file()) if d.is_dir() else []


def _dirs(d: Path) -> list[Path]:
    return sorted(p for p in d.iterdir() if p.is_dir()) if d.is_dir() else []


def scan(cache_dir: Path) -> Iterator[Found]:
    """Every artifact in a torch cache dir, in a stable order.

    Lock files, temporaries, sources (``.cpp``, ``.py``: torch rewrites them from the
    entries) and object files are left out.
    """
    root = Path(cache_dir)
    for sub in _dirs(root / "fxgraph"):
        for kdir in _dirs(sub):
            for f in _files(kdir):
                yield Found("inductor", kdir.name, f)
    for kdir in _dirs(root / "aotautograd"):
        for f in _files(kdir):
            yield Found("aot_autograd", kdir.name, f)
    for sub in _dirs(root):
        if not _TWO.match(sub.name):
            continue
        for f in _files(sub):
            rel = f"{sub.name}/{f.name}"
            if f.name.endswith(".so"):
                yield Found("cpp_kernel", rel, f)
            elif f.name.endswith(".best_config"):
                yield Found("autotune", rel, f)
    for f in _files(root / "cache"):
        if not f.name.endswith((".lock", ".tmp")):
            yield Found("gemm_timing", f.name, f)
    dyn = root / "dynamo"
    for f in _files(dyn):
        if f.name.startswith("code_state_") and f.name.endswith(".pkl"):
            yield Found("pgo", f.name[len("code_state_") : -len(".pkl")], f)
    for kdir in _dirs(dyn):
        if (kdir / "entry").is_file():
            yield Found("precompile", kdir.name, kdir / "entry")
    for dev in _dirs(root / "triton"):
        for kdir in _dirs(dev):
            for f in _files(kdir):
                if not f.name.endswith((".lock", ".tmp")):
                    yield Found("triton_kernel", f"{dev.name}/{kdir.name}/{f.name}", f)


def merge_gemm_timings(existing: bytes, incoming: bytes) -> bytes:
    """Merge two GEMM timing files (``{"system":…, "cache": {op: {…}}}``); existing wins.

    Torch keeps all CPU GEMM timings in one file per system hash, so a hydrate must add to
    what a process measured before rather than replace it. Unreadable input keeps
    ``existing`` unchanged.
    """
    try:
        old, new = json.loads(existing), json.loads(incoming)
    except ValueError:
        return existing

    def deep(a: object, b: object) -> object:
        if isinstance(a, dict) and isinstance(b, dict):
            out = dict(b)
            for k, v in a.items():
                out[k] = deep(v, b[k]) if k in b else v
            return out
        return a

    return json.dumps(deep(old, new)).encode()
