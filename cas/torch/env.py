"""The compile environment of the running process, as an :class:`~cas.objects.Env`.

An entry is only ever served to a process whose env id equals the entry's env. The
fields are exactly what decides whether torch's bytes are valid here:

- ``torch_key``: ``torch._inductor.codecache.torch_key()``, a hash of every torch module
  and ``_C`` itself, so bytes from another torch build never reach this one;
- ``torch_version``, ``python``, ``triton``, ``cuda``, ``platform``, ``machine``;
- device class: ``device`` (``cpu`` or ``cuda``), and for GPUs ``gpu`` (name) and
  ``gpu_capability``; for CPUs ``cpu_isa`` and ``threads`` (the FX key hashes the thread
  count, and the generated C++ hard-codes the vector width);
- ``cache_key_tag``: ``torch.compiler.config.cache_key_tag``.

Computing the env never runs a compiler: the CPU ISA comes from ATen's dispatch
capability, not from ``pick_vec_isa()``, whose dry-compile probe costs seconds in an
empty cache dir (and would defeat a warm start before hydrate could help).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import os
import platform
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from cas.objects import Env
from cas.torch import _compat

if TYPE_CHECKING:
    from cas.digest import ObjectId
    from cas.store import Store

__all__ = ["ENV_FORMAT", "current_env", "cpu_fingerprint", "ensure_env", "env_diff", "env_fields"]

#: Bumped when the meaning of the fields changes; part of every env.
ENV_FORMAT = "1"


def _triton_version() -> str:
    try:
        import triton  # type: ignore[import-not-found]
    except Exception:  # not installed (CPU wheels), or broken: treated as absent
        return ""
    return str(getattr(triton, "__version__", "unknown"))


def _device_fields() -> dict[str, str]:
    cuda = _compat.cuda_device()
    if cuda is not None:
        gpu, major, minor = cuda
        return {"device": "cuda", "gpu": gpu, "gpu_capability": f"{major}.{minor}"}
    return {"device": "cpu", "cpu_isa": _compat.cpu_isa(), "threads": str(_compat.num_threads())}


def env_fields() -> dict[str, str]:
    """Compute the env fields of this process now (uncached; see :func:`current_env`)."""
    fields = {
        "format": ENV_FORMAT,
        "torch_key": _torch_key_hex(),
        "torch_version": _compat.torch_version(),
        "python": platform.python_version(),
        "implementation": sys.implementation.name,
        "triton": _triton_version(),
        "cuda": _compat.cuda_version(),
        "platform": sys.platform,
        "machine": platform.machine(),
        "cache_key_tag": _compat.cache_key_tag(),
    }
    fields.update(_device_fields())
    return fields


@functools.cache
def _cached_env(tag: str, threads: int) -> Env:
    # Keyed on the two fields a process may change after start, so a set_num_threads or
    # a new cache_key_tag gives a new env rather than a stale one.
    del tag, threads
    return Env(env_fields())


def current_env() -> Env:
    """The env of the running process, computed once (per thread count and key tag).

    In a process that has not imported torch (``cas hydrate``, ``cas explain``), the
    fields come from a small cache keyed by the torch install and this machine
    (:func:`_machine_stamp`), so the command does not spend seconds importing torch;
    the first such process on a machine imports torch and fills it.
    """
    if "torch" not in sys.modules:
        stamp = _machine_stamp()
        cached = _read_cache("env", stamp) if stamp else None
        if cached is not None:
            return Env(json.loads(cached))
        env = _cached_env(_compat.cache_key_tag(), _compat.num_threads())
        if stamp:  # torch was imported just now, so its threads are this machine's default
            _write_cache("env", stamp, json.dumps(dict(env.fields), sort_keys=True))
        return env
    return _cached_env(_compat.cache_key_tag(), _compat.num_threads())


# -- the per-install caches -------------------------------------------------------------
#
# torch_key() hashes every file of torch (~0.1-1 s, and importing the inductor stack to
# call it costs more). It only changes when torch's files do, so it is kept per install:
# the install's path plus the size and mtime of the files that a reinstall or upgrade
# rewrites. Rejected: hashing torch's files ourselves (as slow as torch_key itself).

#: Environment variables that change what torch reports for the env fields.
_ENV_VARS = ("TORCH_COMPILE_CACHE_KEY_TAG", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
             "ATEN_CPU_CAPABILITY", "CUDA_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES")


@functools.cache
def _install_stamp() -> str | None:
    """A hash naming this torch install (None when torch is not installed)."""
    try:
        spec = importlib.util.find_spec("torch")  # finds it without importing it
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin:
        return None
    root = Path(spec.origin).parent
    parts = [str(root), ENV_FORMAT, platform.python_version(), sys.implementation.name]
    for path in [root / "__init__.py", root / "version.py", *sorted(root.glob("_C*.so")),
                 *sorted((root / "lib").glob("libtorch*.so"))]:
        try:
            st = path.stat()
        except OSError:
            continue
        parts.append(f"{path.name}:{st.st_size}:{st.st_mtime_ns}")
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:32]


def _machine_stamp() -> str | None:
    """The install stamp plus what decides the device fields on this machine."""
    install = _install_stamp()
    if install is None:
        return None
    from cas.config import env_value

    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 0
    parts = [install, cpu_fingerprint(), str(os.cpu_count()), str(cores),
             str(os.path.exists("/dev/nvidiactl")), str(os.path.exists("/dev/kfd"))]
    parts += [f"{v}={env_value(v) or ''}" for v in _ENV_VARS]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:32]


def _read_cache(kind: str, stamp: str) -> str | None:
    from cas.config import torch_env_cache_dir

    try:
        return (torch_env_cache_dir() / f"{kind}-{stamp}").read_text(encoding="utf-8")
    except OSError:
        return None


def _write_cache(kind: str, stamp: str, value: str) -> None:
    from cas.config import torch_env_cache_dir

    directory = torch_env_cache_dir()
    try:
        directory.mkdir(parents=True, exist_ok=True)
        tmp = directory / f".{kind}-{stamp}.{os.getpid()}.tmp"
        tmp.write_text(value, encoding="utf-8")
        os.replace(tmp, directory / f"{kind}-{stamp}")
    except OSError:  # a read-only home: compute again next time
        pass


def _torch_key_hex() -> str:
    """``torch_key().hex()``, from the per-install cache when this install was seen."""
    stamp = _install_stamp()
    cached = _read_cache("torch-key", stamp) if stamp else None
    if cached and len(cached) == 64:
        return cached
    value = _compat.torch_key()
    if stamp:
        _write_cache("torch-key", stamp, value)
    return value


def ensure_env(store: Store, env: Env | None = None) -> ObjectId:
    """Store ``env`` (default: the current one) and return its id."""
    env = env or current_env()
    return store.objects.put_object(env)


def env_diff(a: Env, b: Env) -> list[tuple[str, str | None, str | None]]:
    """Fields whose values differ between ``a`` and ``b``, sorted by name.

    A field present in only one env shows ``None`` on the other side.
    """
    names = sorted(set(a.fields) | set(b.fields))
    return [
        (n, a.fields.get(n), b.fields.get(n))
        for n in names
        if a.fields.get(n) != b.fields.get(n)
    ]


@functools.cache
def cpu_fingerprint() -> str:
    """A short hash of this CPU's model and feature flags.

    Compiled C++ kernels are built with ``-march=native``: they may use any instruction
    this CPU has, so they are only handed to a CPU with the same model and flags (the
    ``variant`` of ``cpp_kernel`` entries). Reading /proc/cpuinfo is cheap; where it does
    not exist, the processor string stands in.
    """
    text = platform.processor() + platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                name = line.split(":", 1)[0].strip()
                if name in ("model name", "flags", "Features", "CPU part"):
                    text += line
                elif not line.strip():
                    break  # the first processor describes them all
    except OSError:
        pass
    return hashlib.sha256(text.encode()).hexdigest()[:16]
