"""The one place cas touches torch's internals.

Everything cas needs from torch beyond its public API (``torch.compile``,
``torch.compiler.*``, ``torch.__version__``) is named here: private modules, classes,
functions, config flags and the paths torch derives for its caches. Other cas.torch
modules call the functions below instead of reaching into ``torch._*`` themselves, so a
torch release that renames one of them breaks one file, and :func:`probe` names what
broke and which cas feature it turns off (``cas run`` and ``cas explain --current`` report
it) instead of a ``hasattr`` somewhere silently switching the feature off.

Imports stay lazy: importing this module imports neither torch nor dynamo/inductor, and
no function imports more of torch than its job needs (``cas run`` on a program that never
compiles must not pay for inductor). See docs/compat.md.
"""

from __future__ import annotations

import contextlib
import functools
import getpass
import importlib
import logging
import os
import re
import sys
import tempfile
import types
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cas.torch import wrapped

__all__ = [
    "SUPPORTED",
    "Hook",
    "Missing",
    "probe",
    "supported",
]

#: The torch releases cas supports (pyproject: ``torch>=2.11``). ``make test`` runs the
#: torch tests on 2.13, ``make test-compat`` on 2.14 (docs/compat.md).
SUPPORTED = ">=2.11,<2.15"
_MIN = (2, 11)
_BELOW = (2, 15)

# -- module names --------------------------------------------------------------------------

DYNAMO = "torch._dynamo"
CPP_BUILDER = "torch._inductor.cpp_builder"
SELECT_ALGORITHM = "torch._inductor.select_algorithm"
TRITON_HEURISTICS = "torch._inductor.runtime.triton_heuristics"
_REMOTE_CACHE = "torch._inductor.remote_cache"
_INDUCTOR_CONFIG = "torch._inductor.config"
_DYNAMO_CONFIG = "torch._dynamo.config"
_DYNAMO_UTILS = "torch._dynamo.utils"
_DYNAMO_CALLBACK = "torch._dynamo.callback"
_CODECACHE = "torch._inductor.codecache"
_CPU_VEC_ISA = "torch._inductor.cpu_vec_isa"
_COMPILE_FX = "torch._inductor.compile_fx"
INDUCTOR = "torch._inductor"
_BYTECODE = "torch._dynamo.bytecode_transformation"
_PRECOMPILE = "torch._dynamo.precompile_context"
_AOT_CACHE = "torch._functorch._aot_autograd.autograd_cache"
#: Modules that import ``should_use_remote_autograd_cache`` by name (2.11-2.14); the first
#: defines it, the others are patched where present.
_AOT_GATE_USERS = ("torch._functorch._aot_autograd.graph_compile", "torch._functorch.aot_autograd")
_AOT_GATE = "should_use_remote_autograd_cache"

#: torch's remote caches whose backend the live backend replaces (``backend_override_cls``).
#: The bundled autotune cache is left alone: on Triton-less installs it crashes compile
#: (torch-internals.md §2).
REMOTE_CACHES = ("RemoteFxGraphCache", "RemoteAOTAutogradCache", "RemoteAutotuneCache", "RemoteDynamoPGOCache")

#: CachingAutotuner methods that benchmark Triton configs: ``benchmark_all_configs`` and
#: ``coordinate_descent_tuning`` (2.11-2.14), and ``_combo_sequential_autotune`` (combo
#: kernels' block-size search, 2.13 and 2.14). The last two leave every time they measured
#: in ``coordesc_tuner.cached_benchmark_results``.
TRITON_TUNERS = ("coordinate_descent_tuning", "_combo_sequential_autotune")


# -- the probe -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Hook:
    """One thing cas uses from torch's internals: ``module``'s attribute path ``attr``
    (dotted for a class member), and the cas feature that stops working without it."""

    module: str
    attr: str
    feature: str
    #: Only in builds with Triton (GPU): its absence on a CPU wheel disables nothing.
    needs_triton: bool = False

    @property
    def name(self) -> str:
        return f"{self.module}.{self.attr}"


@dataclass(frozen=True)
class Missing:
    """A hook the installed torch lacks, and what cas cannot do without it."""

    hook: str
    feature: str

    def line(self) -> str:
        return f"torch lacks {self.hook}: {self.feature} disabled"

    def to_dict(self) -> dict[str, str]:
        return {"hook": self.hook, "feature": self.feature}


_LIVE = "live backend (serving and recording torch's remote caches)"
_AOT = "live backend for AOTAutograd entries"
_PRE = "precompiled start (dynamo's precompiled units)"
_GEMM_TIMES = "when each GEMM was measured, in autotune records"
_EARLY = "torch's C++ load checks run early (a faster warm start on CPU)"
HOOKS: tuple[Hook, ...] = (
    Hook(_REMOTE_CACHE, "RemoteCacheBackend", _LIVE),
    Hook(_REMOTE_CACHE, "RemoteCacheBackend._get", _LIVE),
    Hook(_REMOTE_CACHE, "RemoteCacheBackend._put", _LIVE),
    *(Hook(_REMOTE_CACHE, f"{c}.backend_override_cls", _LIVE) for c in REMOTE_CACHES),
    Hook(_INDUCTOR_CONFIG, "fx_graph_remote_cache", _LIVE),
    Hook(_INDUCTOR_CONFIG, "autotune_remote_cache", "live backend for autotune results"),
    Hook(_DYNAMO_CONFIG, "automatic_dynamic_remote_pgo", "live backend for PGO profiles"),
    Hook(_AOT_CACHE, _AOT_GATE, _AOT),
    Hook(_AOT_CACHE, "AOTAutogradCache.get_remote_cache.cache_clear", _AOT),
    Hook(_DYNAMO_UTILS, "counters", "cache hit/miss counts and the warmth report"),
    Hook(_DYNAMO_CALLBACK, "callback_handler.register_start_callback",
         "installing cas after an inductor-first import"),
    Hook(CPP_BUILDER, "CppBuilder.get_target_file_path", "tracking of rebuilt C++ kernels (warmth report)"),
    Hook(CPP_BUILDER, "get_cpp_compiler", "the C++ toolchain fields of the env"),
    Hook(CPP_BUILDER, "get_compiler_version_info", "the C++ toolchain fields of the env"),
    Hook(_CODECACHE, "torch_key", "the env id (every entry's env)"),
    Hook(_CODECACHE, "CacheBase.get_system", "recording GEMM timing files"),
    Hook(SELECT_ALGORITHM, "add_feedback_saver", "GEMM benchmark times in autotune records"),
    Hook(SELECT_ALGORITHM, "create_inputs_key", _GEMM_TIMES),
    Hook(SELECT_ALGORITHM, "get_algorithm_selector_cache", _GEMM_TIMES),
    Hook(SELECT_ALGORITHM, "AlgorithmSelectorCache.lookup", "sharded GEMM autotune"),
    Hook(TRITON_HEURISTICS, "CachingAutotuner.benchmark_all_configs", "Triton config times in autotune records",
         needs_triton=True),
    Hook(INDUCTOR, "list_mode_options", "compile modes of the cas backend"),
    Hook(_COMPILE_FX, "compile_fx", "the cas dynamo backend"),
    Hook(_DYNAMO_CONFIG, "caching_precompile", _PRE),
    Hook(_BYTECODE, "_unique_id_counter", _PRE),
    Hook(_PRECOMPILE, "PrecompileContext.save_to_dynamo_cache", _PRE),
    *(Hook(_CPU_VEC_ISA, a, _EARLY) for a in ("valid_vec_isa_list.__wrapped__", "supported_vec_isa_list",
                                              "x86_isa_checker", "get_isa_from_cpu_capability",
                                              "invalid_vec_isa", "VecISA.__bool__")),
    *(Hook(_CODECACHE, a, _EARLY) for a in ("_precompile_header", "CppCodeCache.load_async",
                                            "CppPythonBindingsCodeCache.cpp_compile_command_flags",
                                            "CppPythonBindingsCodeCache._get_uncompiled_header")),
    Hook(CPP_BUILDER, "CppBuilder.get_command_line", _EARLY),
    Hook(CPP_BUILDER, "CppTorchDeviceOptions", _EARLY),
    *(Hook(_INDUCTOR_CONFIG, a, _EARLY) for a in ("cpp.vec_isa_ok", "cpp.simdlen", "cpp_cache_precompile_headers",
                                                  "is_fbcode")),
)


def _has_triton() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def probe(modules: Mapping[str, Any] | None = None, *, triton: bool | None = None) -> list[Missing]:
    """The hooks of :data:`HOOKS` the installed torch lacks (``[]`` when all is there).

    Imports the modules it checks (dynamo, inductor: seconds on a cold process), unless
    ``modules`` maps module names to objects to look in instead (a name it lacks counts as
    a module that does not exist). ``triton``: whether Triton-only hooks count (default:
    whether Triton is importable).
    """
    if triton is None:
        triton = _has_triton()
    out: list[Missing] = []
    seen: set[str] = set()
    for hook in HOOKS:
        if hook.needs_triton and not triton:
            continue
        if _lookup(hook, modules) is None and hook.name not in seen:
            seen.add(hook.name)
            out.append(Missing(hook.name, hook.feature))
    return out


_ABSENT = object()


def _lookup(hook: Hook, modules: Mapping[str, Any] | None) -> Any:
    if modules is not None:
        obj = modules.get(hook.module)
    else:
        try:
            obj = importlib.import_module(hook.module)
        except Exception:
            obj = None
    for part in hook.attr.split("."):
        if obj is None:
            return None
        obj = getattr(obj, part, _ABSENT)
        if obj is _ABSENT:
            return None
    # backend_override_cls is None by default: present is enough.
    return obj if obj is not None else True


def supported(version: str | None = None) -> bool:
    """Whether ``version`` (default: the installed torch's) is in :data:`SUPPORTED`."""
    if version is None:
        import torch

        version = str(torch.__version__)
    found = re.match(r"(\d+)\.(\d+)", version)
    if not found:
        return False
    v = (int(found.group(1)), int(found.group(2)))
    return _MIN <= v < _BELOW


def inductor_loaded() -> bool:
    """Whether Inductor compiled (or was imported to) in this process: the modules
    :func:`probe` looks in are then loaded already, and probing is cheap."""
    return _COMPILE_FX in sys.modules


def report() -> dict[str, Any]:
    """The probe as plain data: ``{"torch", "supported", "missing": [{hook, feature}]}``."""
    import torch

    return {"torch": str(torch.__version__), "supported": supported(),
            "missing": [m.to_dict() for m in probe()]}


def report_lines(found: dict[str, Any]) -> list[str]:
    """The lines of a :func:`report` to show: none when all is well."""
    lines = [] if found.get("supported", True) else [
        f"torch {found.get('torch')} is outside the supported range {SUPPORTED}"]
    return lines + [Missing(m["hook"], m["feature"]).line() for m in found.get("missing", [])]


# -- torch's public API, as cas reads it (each function imports torch itself) ---------------


def torch_version() -> str:
    """``torch.__version__``."""
    import torch

    return str(torch.__version__)


def cuda_version() -> str:
    """The CUDA torch was built with (``torch.version.cuda``), ``""`` for a CPU build."""
    import torch

    return str(torch.version.cuda or "")


def cuda_device() -> tuple[str, int, int] | None:
    """(name, major, minor capability) of CUDA device 0, or None without CUDA."""
    import torch

    if not torch.cuda.is_available():
        return None
    major, minor = torch.cuda.get_device_capability(0)
    return str(torch.cuda.get_device_name(0)), int(major), int(minor)


def cpu_isa() -> str:
    """ATen's CPU capability (``avx2``, ``avx512``...), lower-cased."""
    import torch

    return str(torch.backends.cpu.get_cpu_capability()).lower()


def num_threads() -> int:
    """``torch.get_num_threads()`` (part of inductor's CPU keys)."""
    import torch

    return int(torch.get_num_threads())


def cache_key_tag() -> str:
    """``torch.compiler.config.cache_key_tag`` (``""`` when unset)."""
    import torch

    return str(torch.compiler.config.cache_key_tag or "")


def save_cache_artifacts() -> bytes | None:
    """This process's Mega-Cache container (``torch.compiler.save_cache_artifacts()``),
    or None when torch recorded nothing."""
    import torch

    saved = torch.compiler.save_cache_artifacts()
    return bytes(saved[0]) if saved else None


def dist_rank() -> tuple[int, int]:
    """(rank, world size) of this process in torch.distributed; (0, 1) outside it (a
    process that never imported torch.distributed is in no process group: nothing is
    imported to say so)."""
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def all_gather_bytes(data: bytes, group: Any = None) -> list[bytes] | None:
    """Every rank's ``data`` in rank order, on rank 0 of ``group`` (None elsewhere).

    Sent as byte tensors through ``all_gather`` (``gather_object`` needs numpy, which the
    CPU wheel does not bring): the sizes first, then the bytes padded to the longest.
    """
    import torch
    import torch.distributed as dist

    world = dist.get_world_size(group)
    sizes = [torch.zeros(1, dtype=torch.int64) for _ in range(world)]
    dist.all_gather(sizes, torch.tensor([len(data)], dtype=torch.int64), group=group)
    longest = max(int(s.item()) for s in sizes)
    mine = torch.zeros(longest, dtype=torch.uint8)
    mine[: len(data)] = torch.tensor(list(data), dtype=torch.uint8)
    bufs = [torch.zeros(longest, dtype=torch.uint8) for _ in range(world)]
    dist.all_gather(bufs, mine, group=group)
    if dist.get_rank(group) != 0:
        return None
    return [bytes(buf[: int(size.item())].tolist()) for buf, size in zip(bufs, sizes, strict=True)]


# -- torch's cache dirs (derived as torch derives them, without importing torch) -------------


def default_cache_dir() -> Path:
    """torch's default cache dir (``cache_dir_utils.default_cache_dir``):
    ``$TMPDIR/torchinductor_<user>``, derived without importing torch."""
    try:
        user = getpass.getuser()
    except (KeyError, ModuleNotFoundError, OSError):
        getuid = getattr(os, "getuid", None)
        user = f"uid_{getuid()}" if callable(getuid) else "unknown_user"
    return Path(tempfile.gettempdir()) / ("torchinductor_" + re.sub(r'[\\/:*?"<>|]', "_", user))


def header_dir() -> Path:
    """Where torch keeps precompiled headers (``cpp_builder._HEADER_DIR``): under its
    *default* cache dir, whatever ``TORCHINDUCTOR_CACHE_DIR`` says."""
    return default_cache_dir() / "precompiled_headers"


def torch_cache_dir() -> Path:
    """Torch's cache dir for this process (``TORCHINDUCTOR_CACHE_DIR`` or its default),
    derived as torch derives it, without importing torch."""
    from cas.config import env_value

    found = env_value("TORCHINDUCTOR_CACHE_DIR")
    return Path(found) if found else default_cache_dir()


# -- dynamo --------------------------------------------------------------------------------


def dynamo_imported() -> bool:
    """Whether torch imported dynamo in this process (else it compiled nothing)."""
    return DYNAMO in sys.modules


def dynamo_counters() -> Any:
    """dynamo's counters (``counters["inductor"]["fxgraph_cache_hit"]``...); imports dynamo."""
    from torch._dynamo.utils import counters

    return counters


def cache_counters(groups: tuple[str, ...] = ("inductor", "aot_autograd")) -> dict[str, dict[str, int]]:
    """A copy of dynamo's counters for ``groups``; ``{}`` when dynamo is not imported
    (nothing compiled) or has no counters."""
    if not dynamo_imported():
        return {}
    try:
        counters = dynamo_counters()
        return {k: dict(counters[k]) for k in groups}
    except Exception:
        return {}


def on_compile_start(dynamo: Any, fn: Callable[..., None]) -> bool:
    """Have dynamo call ``fn`` at the start of each compile (its ``callback_handler``,
    2.11-2.14). False when this torch has no such handler."""
    handler = getattr(getattr(dynamo, "callback", None), "callback_handler", None)
    register = getattr(handler, "register_start_callback", None)
    if register is None:
        return False
    register(fn)
    return True


def torch_key() -> str:
    """``codecache.torch_key()``, the hash of every torch module, as hex."""
    from torch._inductor.codecache import torch_key as key

    return str(key().hex())


# -- remote caches (the live backend) ---------------------------------------------------------


def remote_cache_backend(get: Callable[[str], bytes | None], put: Callable[[str, bytes], None]) -> type:
    """A subclass of torch's ``RemoteCacheBackend`` (created by torch with no arguments)
    whose lookups are ``get(key)`` and whose stores are ``put(key, data)``: it overrides
    the private ``_get``/``_put`` that torch's ``RemoteCache`` calls (2.11-2.14)."""
    from torch._inductor.remote_cache import RemoteCacheBackend

    class StoreBackend(RemoteCacheBackend):  # type: ignore[misc,type-arg]
        """torch's remote-cache backend, answered by cas."""

        def _get(self, key: str) -> bytes | None:
            return get(key)

        def _put(self, key: str, data: bytes) -> None:
            put(key, data)

    return StoreBackend


def set_backend_override(cls: Any) -> None:
    """Point each of :data:`REMOTE_CACHES` at backend class ``cls`` (None: torch's own)."""
    from torch._inductor import remote_cache as rc

    for name in REMOTE_CACHES:
        getattr(rc, name).backend_override_cls = cls


def _use_remote_aot() -> bool:
    import torch

    return not torch.compiler.config.force_disable_caches


def remote_cache_switches() -> list[tuple[Any, str, str, Any]]:
    """(object, attribute, kind, value to set) for each switch that turns a remote cache on.

    Not functorch's ``enable_remote_autograd_cache`` flag: the functorch config is hashed
    into every AOTAutograd key, so flipping it would give entries keys that a process
    without cas (a plain capture) never looks up, and the other way round. The gate
    function is patched instead, where torch calls it (imported by name in two modules).
    """
    import torch._dynamo.config as dynamo_config
    import torch._inductor.config as inductor_config

    out: list[tuple[Any, str, str, Any]] = [
        (inductor_config, "fx_graph_remote_cache", "inductor", True),
        (inductor_config, "autotune_remote_cache", "autotune", True),
        (dynamo_config, "automatic_dynamic_remote_pgo", "pgo", True),
    ]
    for name in (_AOT_CACHE, *_AOT_GATE_USERS):
        module = importlib.import_module(name)
        if name == _AOT_CACHE or hasattr(module, _AOT_GATE):  # the first must have it (probe)
            out.append((module, _AOT_GATE, "aot_autograd", _use_remote_aot))
    return out


def clear_aot_remote_cache() -> None:
    """Forget AOTAutograd's ``functools.cache``d remote cache, so a new backend is used."""
    from torch._functorch._aot_autograd.autograd_cache import AOTAutogradCache

    AOTAutogradCache.get_remote_cache.cache_clear()


# -- C++ builds --------------------------------------------------------------------------------


def wrap_target_file_path(module: Any, wrap: Callable[[Callable[[Any], str]], Callable[[Any], str]]) -> None:
    """Replace ``CppBuilder.get_target_file_path`` of ``module`` (torch's cpp_builder) by
    ``wrap(original)``, once (the class attribute: builders pickled to compile workers are
    unaffected)."""
    builder = module.CppBuilder
    original = builder.get_target_file_path
    if getattr(original, "_cas_tracked", False):
        return
    wrapped = wrap(original)
    wrapped._cas_tracked = True  # type: ignore[attr-defined]
    builder.get_target_file_path = wrapped


def cpp_compiler(module: Any) -> tuple[str, str]:
    """(compiler, its version info) as torch's loaded cpp_builder ``module`` sees them."""
    cxx = str(module.get_cpp_compiler())
    return cxx, str(module.get_compiler_version_info(cxx))


def gemm_system_hash() -> str:
    """The name of torch's GEMM timing file (``CacheBase.get_system()["hash"]``)."""
    from torch._inductor.codecache import CacheBase

    return str(CacheBase.get_system()["hash"])


# -- torch's per-process C++ load checks, run early (cas.torch.prewarm) -----------------------


def cpp_load_checks() -> Callable[[], dict[str, Any]] | None:
    """torch's two checks before it loads any C++ kernel on CPU, as one function a
    background thread may run now: the ISA probe (``valid_vec_isa_list``'s body, uncached,
    which fills each ISA's own answer cache, keyed by ``cpp.vec_isa_ok``) and the
    precompiled-header check (``_precompile_header`` with the arguments ``load_async``
    gives it for a kernel's Python binding, so its cache answers torch). Returns what it
    checked (``probed``: the ISAs this CPU admits; ``isas``: those that passed; ``header``).
    ``None`` where they would not run here exactly as torch will run them: not
    x86 Linux, ``cpp.vec_isa_ok`` or ``cpp.simdlen`` set, fbcode, or an ISA of this CPU
    whose answer torch caches whatever the config (the AVX-512 family's own ``__bool__``).

    Imports every module the function needs now, in the calling thread (a module being
    imported by one thread is handed half-initialised to another)."""
    import platform

    from torch._inductor import codecache, config, cpp_builder, cpu_vec_isa

    if (sys.platform != "linux" or platform.machine() not in ("x86_64", "AMD64")
            or config.cpp.vec_isa_ok is not None or config.cpp.simdlen is not None or config.is_fbcode()):
        return None
    flags = cpu_vec_isa.x86_isa_checker()
    here = [isa for isa in cpu_vec_isa.supported_vec_isa_list if all(f in flags for f in str(isa).split())]
    if any(type(isa).__bool__ is not cpu_vec_isa.VecISA.__bool__ for isa in here):
        return None
    list_isas = cpu_vec_isa.valid_vec_isa_list.__wrapped__
    precompile_header = codecache._precompile_header
    bindings = codecache.CppPythonBindingsCodeCache

    def run() -> dict[str, Any]:
        if config.cpp.vec_isa_ok is not None:  # set since: torch answers by it, no probe
            return {"probed": [], "isas": None, "header": False}
        isas = list_isas()
        out: dict[str, Any] = {"probed": [str(i) for i in here], "isas": [str(i) for i in isas], "header": False}
        header = bindings._get_uncompiled_header("cpu")
        if header is None or not config.cpp_cache_precompile_headers or config.cpp.simdlen is not None:
            return out
        isa = (cpu_vec_isa.get_isa_from_cpu_capability(os.getenv("ATEN_CPU_CAPABILITY"), isas,
                                                       cpu_vec_isa.invalid_vec_isa)
               if isas else cpu_vec_isa.invalid_vec_isa)
        # load_async's main build for async_compile.cpp_pybinding on CPU (no kernel code,
        # no extra flags), built in its order: functools.cache keys by keyword order too.
        command = {**bindings.cpp_compile_command_flags, "device_type": "cpu", "extra_flags": (),
                   "use_relative_path": config.is_fbcode(), "vec_isa": isa}
        option = cpp_builder.CppTorchDeviceOptions(compile_only=False, min_optimize=False, **command)
        line = cpp_builder.CppBuilder(name="o", sources="i", BuildOption=option).get_command_line()
        precompile_header(header, line, min_optimize=False, **command)
        out["header"] = True
        return out
    return run


def wait_before_kernel_loads(wait: Callable[[], None]) -> Callable[[], None]:
    """Have torch call ``wait()`` before each C++ kernel load (``CppCodeCache.load_async``,
    which every C++ code cache inherits); returns a function that takes it out again."""
    from torch._inductor.codecache import CppCodeCache

    raw = CppCodeCache.__dict__["load_async"]
    load = raw.__func__

    def load_async(cls: Any, *args: Any, **kwargs: Any) -> Any:
        wait()
        return load(cls, *args, **kwargs)
    mine = classmethod(functools.wraps(load)(load_async))
    setattr(CppCodeCache, "load_async", mine)  # noqa: B010 (a classmethod, as torch's)

    def undo() -> None:
        if CppCodeCache.__dict__.get("load_async") is mine:
            setattr(CppCodeCache, "load_async", raw)  # noqa: B010
    return undo


# -- autotune --------------------------------------------------------------------------------


def best_config_path(autotuner: Any) -> str | None:
    """The ``.best_config`` path of a Triton ``CachingAutotuner`` (relative to the cache
    dir): its ``save_cache_hook`` is ``AutotuneCache.save`` bound to the kernel's cache,
    whose ``local_cache`` is ``(cache, "<cache dir>/<xx>/<hash>.best_config")``."""
    owner = getattr(getattr(autotuner, "save_cache_hook", None), "__self__", None)
    local = getattr(owner, "local_cache", None)
    if not local:
        return None
    return os.path.join(*str(local[1]).split(os.sep)[-2:])


def caching_autotuner() -> Any:
    """Triton's ``CachingAutotuner`` class, or None in a build without Triton."""
    try:
        from torch._inductor.runtime.triton_heuristics import CachingAutotuner
    except ImportError:
        return None
    return CachingAutotuner


def triton_tuner_methods(autotuner: Any) -> dict[str, Any]:
    """The methods of ``CachingAutotuner`` that benchmark (:data:`TRITON_TUNERS` and
    ``benchmark_all_configs``) this torch has, by name."""
    names = ("benchmark_all_configs", *TRITON_TUNERS)
    return {name: getattr(autotuner, name) for name in names if hasattr(autotuner, name)}


def coordesc_results(autotuner: Any) -> dict[Any, Any]:
    """What coordinate descent (and combo tuning) measured for a ``CachingAutotuner``:
    ``{config hash tuple: ms}``."""
    return dict(getattr(getattr(autotuner, "coordesc_tuner", None), "cached_benchmark_results", {}) or {})


def select_algorithm() -> Any:
    """inductor's ``select_algorithm`` module (GEMM autotuning)."""
    from torch._inductor import select_algorithm as module

    return module


def add_gemm_feedback(module: Any, fn: Callable[[str, str], None]) -> Callable[[], None]:
    """Have ``select_algorithm`` (``module``) call ``fn(op name, inputs key)`` after each
    GEMM it benchmarks (``add_feedback_saver``; the key is ``create_inputs_key``'s, the one
    its timing file uses). Returns the function that removes it again.

    Both run inside torch's autotuning, so neither raises: a renamed helper costs the
    timestamps of GEMM records (:func:`probe` names it), never a compile.
    """

    def on_gemm(timings: Any, name: str, input_nodes: Any, *_: Any) -> None:
        with contextlib.suppress(Exception):
            fn(name, module.create_inputs_key(input_nodes))

    def remove() -> None:
        with contextlib.suppress(Exception):
            cache = module.get_algorithm_selector_cache()
            cache.feedback_saver_fns = [f for f in cache.feedback_saver_fns if f is not on_gemm]

    module.add_feedback_saver(on_gemm)
    return remove


@contextlib.contextmanager
def patched_gemm_lookup(make: Callable[[Any], Any]) -> Iterator[None]:
    """``AlgorithmSelectorCache.lookup`` replaced by ``make(original)`` inside the block."""
    from torch._inductor.select_algorithm import AlgorithmSelectorCache

    orig = AlgorithmSelectorCache.lookup
    AlgorithmSelectorCache.lookup = make(orig)  # type: ignore[method-assign]
    try:
        yield
    finally:
        AlgorithmSelectorCache.lookup = orig  # type: ignore[method-assign]


# -- the cas backend ---------------------------------------------------------------------------


def mode_options(mode: str) -> dict[str, Any]:
    """inductor's config patches for ``torch.compile(mode=...)``."""
    import torch._inductor

    return dict(torch._inductor.list_mode_options(mode))


def compile_fx(gm: Any, example_inputs: Any, **kwargs: Any) -> Any:
    """Compile with Inductor, as the ``inductor`` backend does."""
    from torch._inductor.compile_fx import compile_fx as compile_

    return compile_(gm, example_inputs, **kwargs)


# -- precompiled start (dynamo's caching precompile, 2.11-2.14) ------------------------------

_EVAL_FRAME_LOG = "torch._dynamo.eval_frame"
#: A loaded unit installs the recording process's dynamo names (``__builtins_dict___N``,
#: N from dynamo's per-process counter) into the model's module; dynamo's next trace there
#: (a shape whose guards fail) picks names from the same counter and asserts on a clash
#: (2.13). So each process starts its counter at its own random multiple of 2**20: two
#: processes' names meet only if they draw the same one of 2**31 slots.
_NAME_SLOT = 1 << 20


class _RefusedUnits(logging.Handler):
    """Keeps why torch refused a precompiled unit (it logs and traces instead)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.reasons: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith(("Failed to load entry from dynamo cache", "Failed to load package from path")) \
                and record.exc_info:
            exc = record.exc_info[1]
            self.reasons.append(_one_line(exc) if exc is not None else "unknown")


_refused = _RefusedUnits()


def start_precompile(dynamo: Any) -> None:
    """Turn on dynamo's caching precompile in this process (``caching_precompile``): each
    ``torch.compile``'d function loads its unit from ``<cache dir>/dynamo/<source id>/``
    on its first call, and :func:`save_precompiled` writes the units compiled here."""
    import itertools
    import secrets

    bytecode: Any = importlib.import_module(_BYTECODE)
    guard_units()  # first: a torch without what it wraps never gets caching precompile on
    dynamo.config.caching_precompile = True
    start = (1 + secrets.randbelow(1 << 31)) * _NAME_SLOT + next(bytecode._unique_id_counter)
    bytecode._unique_id_counter = itertools.count(start)
    log = logging.getLogger(_EVAL_FRAME_LOG)
    if _refused not in log.handlers:
        log.addHandler(_refused)


def precompile_on() -> bool:
    """Whether this process runs with dynamo's caching precompile."""
    if not dynamo_imported():
        return False
    return bool(getattr(sys.modules[DYNAMO].config, "caching_precompile", False))


def save_precompiled() -> None:
    """Write the units dynamo compiled in this process into the cache dir, where capture
    finds them (``PrecompileContext.save_to_dynamo_cache``)."""
    if precompile_on():
        importlib.import_module(_PRECOMPILE).PrecompileContext.save_to_dynamo_cache()


def refused_units() -> list[str]:
    """Why torch refused each precompiled unit it found here, one line each."""
    return list(_refused.reasons)


# -- precompiled units torch cannot install or record ----------------------------------------

_PACKAGE = "torch._dynamo.package"
_GUARDS = "torch._dynamo.guards"
_OUTPUT_GRAPH = "torch._dynamo.output_graph"
#: What torch's guard-state pickler writes for a function its name does not lead back to.
_FQN_MISMATCH = ("fqn mismatch",)
#: torch logs here when a unit's file cannot be read or unpickled (``DynamoCache.load``).
_PACKAGE_LOAD_FAILED = "Failed to load package from path"
#: Longest reason kept for the warmth report (a reason may quote torch's repr of a value).
_REASON_MAX = 200
#: ``CompilePackage`` methods dynamo calls while it traces a frame to record the unit.
_RECORDING = ("add_guarded_code", "add_inlined_source", "update_device_type",
              "add_resume_function", "add_import_source", "add_backend_id")


class UnitNotInstalled(RuntimeError):
    """A precompiled unit torch could not install here. A ``RuntimeError``, the one kind
    torch's loader (``_TorchDynamoContext.__call__``) catches: it logs the reason and
    traces the function as if there were no unit."""


_unrecorded: list[str] = []


def _one_line(exc: BaseException) -> str:
    text = (str(exc).splitlines() or [""])[0]
    line = text if isinstance(exc, RuntimeError) else f"{type(exc).__name__}: {text}"
    return line[:_REASON_MAX]


def _reset_package(package: Any) -> None:
    """Undo what a unit installed, so torch starts ``package`` afresh (2.13 and 2.14
    re-initialize it after a failed install, and assert if it was left initialized)."""
    with contextlib.suppress(Exception):
        package.uninstall()
    package._initialized = False
    package._codes = {}
    package._source_info = sys.modules[_PACKAGE].SourceInfo(inlined_sources=set())
    package._resume_codes = set()
    package._cached_backends = {}


def _refusing(method: Callable[..., Any]) -> Callable[..., Any]:
    """``method`` of CompilePackage, loading a unit: any failure resets the package and
    becomes one :class:`UnitNotInstalled` (a ``_Missing`` value, a missing backend, a
    guard torch cannot rebuild...), so the program traces instead of crashing."""
    def load(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except Exception as exc:
            _reset_package(self)
            raise UnitNotInstalled(_one_line(exc)) from exc
    return load


def _globals_module(package: Any) -> None:
    """Name, as the module of a fresh package's function, the module whose dict is its
    ``__globals__``. torch (2.13, 2.14.1) takes ``fn.__module__``, which
    ``functools.wraps`` copies from the wrapped function: for a decorated ``forward``
    (transformers' ``can_return_tuple``) the unit would then read the globals its guards
    and compiled code need from the wrong module, and every guard fails on load
    (``KeyError on G[...]``)."""
    fn = package._innermost_fn
    entry = package._codes.get(getattr(fn, "__code__", None))
    name = getattr(fn, "__globals__", {}).get("__name__")
    module = sys.modules.get(name) if isinstance(name, str) else None
    if entry is not None and module is not None and vars(module) is fn.__globals__:
        entry.python_module = name


def _initialize_refusing(method: Callable[..., Any]) -> Callable[..., Any]:
    refusing = _refusing(method)

    def initialize(self: Any, fn: Any, dynamo: Any = None, *args: Any, **kwargs: Any) -> Any:
        if dynamo is None:  # a fresh package, nothing loaded: torch's own path
            method(self, fn, dynamo, *args, **kwargs)
            _globals_module(self)
            return None
        return refusing(self, fn, dynamo, *args, **kwargs)
    return initialize


def _unrecordable(package: Any, exc: BaseException) -> None:
    """``package`` failed while dynamo recorded it: it is never saved (a unit missing part
    of what was traced could skip or mis-guard a frame); the compile goes on."""
    if getattr(package, "_cas_unrecordable", None) is None:
        package._cas_unrecordable = _one_line(exc)
        _unrecorded.append(package._cas_unrecordable)
    with contextlib.suppress(Exception):
        sys.modules[_PRECOMPILE].PrecompileContext._dynamo_cache_entries.pop(package.source_id, None)


def _recording(method: Callable[..., Any]) -> Callable[..., Any]:
    def record(self: Any, *args: Any, **kwargs: Any) -> Any:
        if getattr(self, "_cas_unrecordable", None) is not None:
            return None
        try:
            return method(self, *args, **kwargs)
        except Exception as exc:
            _unrecordable(self, exc)
            return None
    return record


def _code_context_recording(method: Callable[..., Any]) -> Callable[..., Any]:
    @contextlib.contextmanager
    def code_context(self: Any, code: Any) -> Iterator[None]:
        with contextlib.ExitStack() as stack:
            try:
                stack.enter_context(method(self, code))
            except Exception as exc:  # e.g. PackageError: no source found for the code
                _unrecordable(self, exc)
            yield
    return code_context


def _accessor_path(code: types.CodeType) -> tuple[str, str, str] | None:
    """(module, class qualname, attribute path) that lead from the module to ``code`` when
    ``code`` is the getter, setter or deleter of a ``property`` (or the function of a
    ``functools.cached_property``) on a class, else None. torch's ``_get_code_source``
    (2.13, 2.14.1) walks ``co_qualname`` with ``getattr`` and stops at the property
    object, which is not a function, so it finds no path; torch's ``_lookup_code`` walks
    this one back (``getattr`` of each part, from ``sys.modules[module]``), which is
    checked here before it is returned: the path leads to this very code or is not used."""
    import inspect

    module = inspect.getmodule(code)
    *owner_parts, attr = code.co_qualname.split(".")
    if module is None or not owner_parts or "<locals>" in owner_parts:
        return None
    owner: Any = module
    for part in owner_parts:
        owner = getattr(owner, part, None)
    if not inspect.isclass(owner):
        return None
    accessor = inspect.getattr_static(owner, attr, None)
    for field in ("fget", "fset", "fdel", "func"):
        if getattr(getattr(accessor, field, None), "__code__", None) is code:
            path = f"{attr}.{field}.__code__"
            return (module.__name__, ".".join(owner_parts), path) if _walk(owner, path) is code else None
    return None


def _walk(obj: Any, path: str) -> Any:
    for part in path.split("."):
        obj = getattr(obj, part, None)
    return obj


def _accessors_filed(method: Callable[..., Any]) -> Callable[..., Any]:
    """``CompilePackage._add_user_function``, filing a frame dynamo compiled on its own
    that is a property's getter (transformers' ``PreTrainedModel.loss_function``, called
    after a graph break in a training step) by the path :func:`_accessor_path` finds,
    where torch finds none and the unit would not be recorded."""
    def add_user_function(self: Any, code: types.CodeType) -> None:
        try:
            method(self, code)
        except Exception:
            found = _accessor_path(code)
            if found is None:
                raise
            module, owner, path = found
            self._add_function(code, module, function_name=owner, code_source=path)
    return add_user_function


def _record_package_guarded(method: Callable[..., Any]) -> Callable[..., Any]:
    def record_package(self: Any, package: Any) -> None:
        if getattr(package, "_cas_unrecordable", None) is not None:
            return
        try:
            method(self, package)
        except Exception as exc:
            _unrecordable(package, exc)
    return record_package


def _naming_wrapped(method: Callable[..., Any]) -> Callable[..., Any]:
    """``GuardsStatePickler.reducer_override``, writing a ``functools.wraps``-decorated
    function's original by name (:mod:`cas.torch.wrapped`) where torch would write
    ``_Missing`` and so make the unit uninstallable."""
    missing = sys.modules[_GUARDS]._Missing

    def reducer_override(self: Any, obj: Any) -> Any:
        reduced = method(self, obj)
        if isinstance(reduced, tuple) and len(reduced) == 2 and reduced[0] is missing \
                and reduced[1] == _FQN_MISMATCH:
            path = wrapped.wrapped_path(obj)
            if path is not None:
                return wrapped.unwrapped, path
        return reduced
    return reducer_override


def _globals_recorded(method: Callable[..., Any]) -> Callable[..., Any]:
    """``OutputGraph.install_global_by_id``, telling the unit being recorded about the
    global: dynamo's bytecode loads a module it needs under a name made of the module's
    id (``___module_collections_<id>_c0``, ``codegen.create_load_python_module``), which
    torch installs in the recording process only (2.13, 2.14.1), so a loaded unit would
    end the program with a ``NameError``. A module is recorded as an import, installed
    again by name on load; any other value (a dict, a weakref, a stream) has no name a
    new process could find, so that unit is not recorded."""
    def install_global_by_id(self: Any, prefix: str, value: Any) -> str:
        name: str = method(self, prefix, value)
        package = getattr(self, "package", None)
        if package is None:
            return name
        if isinstance(value, types.ModuleType) and sys.modules.get(value.__name__) is value:
            package.add_import_source(name, value.__name__)
        else:
            _unrecordable(package, RuntimeError(f"its code reads a global torch does not save ({prefix})"))
        return name
    return install_global_by_id


#: Most guarded codes a merged unit keeps per compiled code: dynamo's default
#: ``recompile_limit``, past which torch itself stops compiling a frame again.
MERGED_GUARDED_MAX = 8


def merge_units(kept: bytes, new: bytes) -> bytes | None:
    """One unit holding what both precompiled units of one function hold (torch's
    ``PrecompileCacheEntry`` pickles, the same source id), or None when there is nothing
    to merge: made by other systems or for another device, another source of a function
    they share, nothing in ``new`` that ``kept`` lacks, or more than
    :data:`MERGED_GUARDED_MAX` guarded codes for one code.

    Two programs calling one function differently (GPT-2's ``forward`` for inference and
    for a training step) record two units under one source id, and torch reads one file
    per source id. Merged, each compiled code keeps both programs' guarded codes in order
    (``kept``'s first), as dynamo keeps the recompiles of one process, and torch's guards
    pick the one that holds at each call. Resume functions and backends carry names unique
    to their process (:func:`start_precompile`), so both sets are installed side by side.
    Both pickles are unpickled: call only on units the trust policy lets reach torch."""
    import pickle

    importlib.import_module(_PACKAGE)
    into, add = pickle.loads(kept), pickle.loads(new)  # noqa: S301  (units torch itself would load)
    a, b = into.dynamo, add.dynamo
    if (a.system_info, a.device_type, a.fn_name, a.fn_first_lineno) != \
            (b.system_info, b.device_type, b.fn_name, b.fn_first_lineno):
        return None
    if not _same_sources(a.source_info.inlined_sources, b.source_info.inlined_sources):
        return None
    if a.codes[0].python_code != b.codes[0].python_code:
        return None
    added = 0
    for i, code in enumerate(b.codes):
        mine = a.codes[0] if i == 0 else _same_code(a.codes[1:], code)
        if mine is None:
            a.codes.append(code)
            added += 1
        elif mine.bypassed or code.bypassed:
            return None
        else:
            added += _merge_code(mine, code)
    if added == 0 or any(len(c.guarded_codes) > MERGED_GUARDED_MAX for c in a.codes):
        return None
    a.source_info.inlined_sources |= b.source_info.inlined_sources
    into.backends.update(add.backends)
    return pickle.dumps(into)


def _same_code(codes: list[Any], code: Any) -> Any:
    """The entry of ``codes`` for the same code as ``code`` (a resume function both
    programs made has one entry with both names, as torch files it in one process)."""
    same = (code.python_module, code.code_source, code.install_to_global, code.python_code)
    return next((c for c in codes if (c.python_module, c.code_source, c.install_to_global, c.python_code) == same),
                None)


def _same_sources(a: set[Any], b: set[Any]) -> bool:
    """Whether no lines both units hashed differ (the same module lines, another checksum)."""
    lines = {(s.module, s.firstlineno, s.lastlineno): s.checksum for s in a}
    return all(lines.get((s.module, s.firstlineno, s.lastlineno), s.checksum) == s.checksum for s in b)


def _merge_code(mine: Any, other: Any) -> int:
    """Add ``other``'s guarded codes and names that ``mine`` lacks; how many were added."""
    have = {g.guards_state for g in mine.guarded_codes}
    new = [g for g in other.guarded_codes if g.guards_state not in have]
    names = [n for n in other.function_names if n not in mine.function_names]
    mine.guarded_codes.extend(new)
    mine.function_names.extend(names)
    mine.import_sources.update(other.import_sources)
    mine.backend_ids.extend(x for x in other.backend_ids if x not in mine.backend_ids)
    return len(new) + len(names)


def guard_units() -> None:
    """Make dynamo's precompiled units safe to load and to record, once per process: a
    unit torch cannot install is refused (:class:`UnitNotInstalled`, reason kept for
    :func:`refused_units`) and its function traced; a unit that fails while being
    recorded is dropped (:func:`unrecorded_units`) and the compile goes on."""
    package = importlib.import_module(_PACKAGE)
    importlib.import_module(_PRECOMPILE)
    cls = package.CompilePackage
    if getattr(cls, "_cas_guarded", False):
        return
    # Every method looked up before any is replaced: a torch that lacks one is left as is.
    methods = {"install": _refusing(cls.install), "initialize": _initialize_refusing(cls.initialize),
               "code_context": _code_context_recording(cls.code_context),
               "_add_user_function": _accessors_filed(cls._add_user_function)}
    methods.update({name: _recording(getattr(cls, name)) for name in _RECORDING})
    record = _record_package_guarded(package.DynamoStore.record_package)
    pickler = importlib.import_module(_GUARDS).GuardsStatePickler
    reducer = _naming_wrapped(pickler.reducer_override)
    output_graph = importlib.import_module(_OUTPUT_GRAPH).OutputGraph
    install_global = _globals_recorded(output_graph.install_global_by_id)
    for name, method in methods.items():
        setattr(cls, name, method)
    package.DynamoStore.record_package = record
    pickler.reducer_override = reducer
    output_graph.install_global_by_id = install_global
    cls._cas_guarded = True
    log = logging.getLogger(_PACKAGE)
    if _refused not in log.handlers:
        log.addHandler(_refused)


def guard_units_if_on() -> None:
    """:func:`guard_units` where the process turned caching precompile on itself
    (``TORCH_CACHING_PRECOMPILE=1``) rather than through cas."""
    if precompile_on():
        log = logging.getLogger(_EVAL_FRAME_LOG)
        if _refused not in log.handlers:
            log.addHandler(_refused)
        guard_units()


def unrecorded_units() -> list[str]:
    """Why a unit compiled here was not recorded, one line each."""
    return list(_unrecorded)
