"""``cas.torch._compat``: the one module that touches torch internals, and its probe."""

from __future__ import annotations

import ast
import functools
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from cas.torch import _compat

TORCH_PKG = Path(_compat.__file__).parent
AOT_GATE = "torch._functorch._aot_autograd.autograd_cache.should_use_remote_autograd_cache"


def _fake_torch(drop: str | None = None) -> dict[str, Any]:
    """Module objects holding every hook of ``HOOKS`` (fakes), less the one named ``drop``."""
    modules: dict[str, Any] = {}
    for hook in _compat.HOOKS:
        if hook.name == drop:
            continue
        obj = modules.setdefault(hook.module, SimpleNamespace())
        *parents, last = hook.attr.split(".")
        for part in parents:
            if not hasattr(obj, part):
                setattr(obj, part, SimpleNamespace())
            obj = getattr(obj, part)
        if not hasattr(obj, last):  # a class may be a hook and hold hooks (RemoteCacheBackend._get)
            setattr(obj, last, None if last == "backend_override_cls" else SimpleNamespace())
    return modules


def test_probe_of_a_torch_with_every_hook_finds_nothing_missing() -> None:
    assert _compat.probe(_fake_torch(), triton=True) == []


def test_probe_names_a_missing_hook_and_the_feature_it_disables() -> None:
    missing = _compat.probe(_fake_torch(drop=AOT_GATE), triton=True)
    assert missing == [_compat.Missing(AOT_GATE, "live backend for AOTAutograd entries")]
    assert missing[0].line() == f"torch lacks {AOT_GATE}: live backend for AOTAutograd entries disabled"


def test_probe_of_a_renamed_module_names_each_of_its_hooks() -> None:
    modules = _fake_torch()
    del modules["torch._inductor.cpp_builder"]
    names = [m.hook for m in _compat.probe(modules, triton=True)]
    assert names == ["torch._inductor.cpp_builder.CppBuilder.get_target_file_path",
                     "torch._inductor.cpp_builder.get_cpp_compiler",
                     "torch._inductor.cpp_builder.get_compiler_version_info",
                     "torch._inductor.cpp_builder.CppBuilder.get_command_line",
                     "torch._inductor.cpp_builder.CppTorchDeviceOptions"]


def test_triton_only_hooks_count_only_where_triton_is() -> None:
    hook = "torch._inductor.runtime.triton_heuristics.CachingAutotuner.benchmark_all_configs"
    modules = _fake_torch(drop=hook)
    assert _compat.probe(modules, triton=False) == []
    assert [m.hook for m in _compat.probe(modules, triton=True)] == [hook]


def test_probe_of_the_installed_torch_finds_every_hook() -> None:
    assert _compat.supported()
    assert _compat.probe() == []
    found = _compat.report()
    assert found["supported"] is True and found["missing"] == []
    assert _compat.report_lines(found) == []  # nothing to say when all is well


@pytest.mark.parametrize(("version", "ok"), [("2.10.2", False), ("2.11.0", True), ("2.13.0+cpu", True),
                                             ("2.14.1+cu130", True), ("2.15.0.dev20270101", False),
                                             ("garbage", False)])
def test_the_supported_range(version: str, ok: bool) -> None:
    assert _compat.supported(version) is ok


def test_the_cas_run_summary_says_what_is_missing_one_line_each() -> None:
    from cas_cli.cmd_torch_run import _summarise, _summary_text

    gate = {"hook": AOT_GATE, "feature": "live backend for AOTAutograd entries"}
    lines = [{"compat": {"torch": "2.99.0", "supported": False, "missing": [gate]}},
             {"compat": {"torch": "2.99.0", "supported": False, "missing": [gate]}},
             {"compat": None}]
    total = _summarise(lines)
    assert total["compat"] == {"torch": "2.99.0", "supported": False, "missing": [gate]}
    text = _summary_text(total, None).splitlines()
    assert text[-2:] == [f"cas run: torch 2.99.0 is outside the supported range {_compat.SUPPORTED}",
                         f"cas run: torch lacks {AOT_GATE}: live backend for AOTAutograd entries disabled"]
    quiet = _summary_text(_summarise([{"compat": {"torch": "2.13.0", "supported": True, "missing": []}}]), None)
    assert "torch lacks" not in quiet and "supported range" not in quiet


def test_importing_compat_imports_no_torch() -> None:
    import subprocess

    code = "import sys, cas.torch._compat; print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch'))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


#: The one module of cas.torch besides _compat that uses torch: the demo's model program,
#: a user of torch's public API (``nn``, ``randn``, ``torch.compile``) like any workload.
USERS_OF_TORCH = {"demo.py"}


def _torch_uses(tree: ast.AST) -> list[str]:
    """Where a module touches torch in code: ``import torch...``, ``from torch... import``,
    ``torch.x.y`` attribute chains and module-name strings ``"torch._..."`` (docstrings
    and comments do not count)."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [f"import {a.name}" for a in node.names if a.name.split(".")[0] == "torch"]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "torch":
            found.append(f"from {node.module} import")
        elif isinstance(node, ast.Attribute) and not isinstance(node.value, ast.Attribute):
            if isinstance(node.value, ast.Name) and node.value.id == "torch":
                found.append(f"torch.{node.attr}")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith("torch._"):
            found.append(node.value)
    return found


def test_only_compat_touches_torch() -> None:
    offenders = {}
    for path in sorted(TORCH_PKG.glob("*.py")):
        if path.name == "_compat.py" or path.name in USERS_OF_TORCH:
            continue
        uses = _torch_uses(ast.parse(path.read_text(encoding="utf-8")))
        if uses:
            offenders[path.name] = uses
    assert offenders == {}
    # The check can fail: it finds what it looks for, public API included.
    code = "import torch._dynamo\nfrom torch.compiler import x\ny = torch.cuda.is_available()\nz = 'torch._inductor'\n"
    assert sorted(_torch_uses(ast.parse(code))) == ["from torch.compiler import", "import torch._dynamo",
                                                    "torch._inductor", "torch.cuda"]


def test_a_renamed_gemm_helper_costs_timestamps_never_a_compile() -> None:
    savers: list[Any] = []
    seen: list[tuple[str, str]] = []
    cache = SimpleNamespace(feedback_saver_fns=savers)
    sound = SimpleNamespace(add_feedback_saver=savers.append, create_inputs_key=lambda nodes: f"key{nodes}",
                            get_algorithm_selector_cache=lambda: cache)
    remove = _compat.add_gemm_feedback(sound, lambda name, key: seen.append((name, key)))
    savers[0]({}, "mm", [1, 2], [], None)  # as select_algorithm calls it after a benchmark
    assert seen == [("mm", "key[1, 2]")]
    remove()
    assert cache.feedback_saver_fns == []
    # torch renamed both helpers: the callback and its removal raise nothing into torch
    later: list[Any] = []
    renamed = SimpleNamespace(add_feedback_saver=later.append)
    remove = _compat.add_gemm_feedback(renamed, lambda name, key: seen.append((name, key)))
    later[0]({}, "mm", [3], [], None)
    remove()
    assert seen == [("mm", "key[1, 2]")]


def test_the_live_backend_class_answers_torchs_private_get_and_put() -> None:
    puts: list[tuple[str, bytes]] = []
    backend = _compat.remote_cache_backend(lambda key: b"v:" + key.encode(), lambda k, d: puts.append((k, d)))()
    assert backend._get("k") == b"v:k"
    backend._put("k", b"data")
    assert puts == [("k", b"data")]


def test_docs_compat_lists_every_hook_the_probe_covers() -> None:
    text = (TORCH_PKG.parents[1] / "docs" / "compat.md").read_text(encoding="utf-8")
    listed = {line.split("`")[1]: line.split("|")[2].strip() for line in text.splitlines()
              if line.startswith("| `torch.")}
    assert listed == {h.name: h.feature + (" (Triton builds only)" if h.needs_triton else "")
                      for h in _compat.HOOKS}


class _Accessors:
    @property
    def value(self) -> int:
        return 1

    @value.setter
    def value(self, v: int) -> None:
        pass

    @functools.cached_property
    def cached(self) -> int:
        return 2

    def plain(self) -> int:
        return 3


@pytest.mark.parametrize("code, path", [
    (_Accessors.value.fget.__code__, "value.fget.__code__"),  # type: ignore[attr-defined]
    (_Accessors.value.fset.__code__, "value.fset.__code__"),  # type: ignore[attr-defined]
    (_Accessors.cached.func.__code__, "cached.func.__code__"),
])
def test_a_property_getter_is_filed_by_a_path_torch_walks_back(code: Any, path: str) -> None:
    # torch's own _get_code_source finds no path to such code (transformers'
    # PreTrainedModel.loss_function); the path cas files is the one torch's _lookup_code
    # follows in a loading process, to this very code.
    from torch._dynamo.package import _lookup_code

    found = _compat._accessor_path(code)
    assert found == (__name__, "_Accessors", path)
    module, owner, code_source = found
    entry = SimpleNamespace(python_module=module, function_names=[owner], code_source=code_source)
    assert _lookup_code(entry) is code


def test_a_function_that_is_no_accessor_gets_no_path() -> None:
    assert _compat._accessor_path(_Accessors.plain.__code__) is None
    assert _compat._accessor_path(_fake_torch.__code__) is None
