"""Mega-Cache: the pure-Python container codec, and import/export through the CLI."""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import pytest
from torchkit import Captured, TorchEnv, seed_kernels

from cas.errors import CorruptObject
from cas.objects import Env
from cas.store import Store
from cas.torch import megacache
from cas.torch.capture import commit_artifacts
from cas.torch.megacache import Artifact


def test_real_container_splits_and_reassembles_byte_for_byte(captured: Captured) -> None:
    data = captured.megacache.read_bytes()
    arts = megacache.decode(data)
    kinds = {a.kind for a in arts}
    assert {"inductor", "aot_autograd"} <= kinds <= set(megacache.MEGACACHE_KINDS)
    assert all(a.key and a.content for a in arts)
    assert megacache.encode(arts) == data


def test_synthetic_artifacts_round_trip() -> None:
    arts = [Artifact("inductor", "fabc", b"\x00pickle"), Artifact("autotune", "ab/cd.best_config", b"{}"),
            Artifact("inductor", "fdef", b"")]
    assert megacache.decode(megacache.encode(arts)) == [arts[0], arts[2], arts[1]]


@pytest.mark.parametrize("damage", ["crc", "truncate", "version", "short"])
def test_damaged_containers_are_rejected(damage: str) -> None:
    data = megacache.encode([Artifact("inductor", "fabc", b"content")])
    if damage == "crc":
        data = data[:-1] + bytes([data[-1] ^ 1])
    elif damage == "truncate":
        body = data[4:-3]
        data = zlib.crc32(body).to_bytes(4, "big") + body
    elif damage == "version":
        body = (2).to_bytes(8, "big") + data[12:]
        data = zlib.crc32(body).to_bytes(4, "big") + body
    else:
        data = data[:5]
    with pytest.raises(CorruptObject):
        megacache.decode(data)


def test_import_then_export_loads_in_a_fresh_process_with_hits(
    captured: Captured, torch_env: TorchEnv, tmp_path: Path
) -> None:
    store = tmp_path / "s"
    Store.init(store).close()
    imported = json.loads(torch_env.cas(store, "--json", "import-megacache", str(captured.megacache)).stdout)
    expected: dict[str, int] = {}
    for a in megacache.decode(captured.megacache.read_bytes()):
        expected[a.kind] = expected.get(a.kind, 0) + 1
    # Guard variants of one key are separate artifacts and separate entries.
    assert imported["by_kind"] == expected and imported["commit"]
    # Python lists every module it imports on stderr (PYTHONPROFILEIMPORTTIME): both
    # commands read and write the container themselves (cas.torch.megacache) and, once a
    # process on this machine filled the per-install env cache (the import above did if
    # none had), take the env from it, without importing torch (~2 s each).
    listing = {"PYTHONPROFILEIMPORTTIME": "1"}
    again = torch_env.cas(store, "import-megacache", str(captured.megacache), extra_env=listing)
    assert "nothing new" in again.stdout
    assert "cas.torch.megacache" in _imports(again.stderr) and "torch" not in _imports(again.stderr)

    out = tmp_path / "export.bin"
    run = torch_env.cas(store, "--json", "export-megacache", "main", "-o", str(out), extra_env=listing)
    assert "torch" not in _imports(run.stderr)
    exported = json.loads(run.stdout)
    assert exported["by_kind"] == expected
    # Mega-Cache alone lacks the C++ kernels; seed them (as cas hydrate would) so that this
    # test is about the FX and AOT entries, and g++ does not rebuild identical kernels.
    cache = seed_kernels(captured.cache_dir, tmp_path / "cache")
    torch_env.compiles()
    res = torch_env.run(cache, "mlp:infer", "--small", "--load-megacache", str(out))
    counters = res["cases"]["mlp:infer"]["counters"]
    assert counters["inductor"]["fxgraph_cache_hit"] >= 1
    assert counters["aot_autograd"]["autograd_cache_hit"] >= 1
    assert counters["inductor"].get("fxgraph_cache_miss", 0) == 0
    # (torch still preprocesses its kernel header once per process, `g++ -E`: not a compile)
    assert [c for c in torch_env.compiles() if " -E " not in f" {c} "] == []


def _imports(stderr: str) -> set[str]:
    """The modules of a ``PYTHONPROFILEIMPORTTIME=1`` listing (``import time: ... | name``)."""
    return {line.rsplit("|", 1)[1].strip() for line in stderr.splitlines() if line.startswith("import time:")}


def test_import_of_a_broken_file_is_one_clear_error(torch_env: TorchEnv, tmp_path: Path) -> None:
    store = tmp_path / "s"
    Store.init(store).close()
    bad = tmp_path / "bad.bin"
    bad.write_bytes(b"definitely not a mega-cache file")
    proc = torch_env.cas(store, "import-megacache", str(bad), ok=False)
    assert proc.returncode == 5 and proc.stderr.startswith("cas: error: not a mega-cache file")
    assert "Traceback" not in proc.stderr


def test_export_of_a_ref_without_entries_here_is_refused(torch_env: TorchEnv, tmp_path: Path) -> None:
    # A ref with only a C++ kernel: nothing Mega-Cache can carry.
    with Store.init(tmp_path / "s") as s:
        commit_artifacts(s, [Artifact("cpp_kernel", "ab/cabc.so", b"\x7fELF")], message="so only",
                         env=Env({"torch_key": "1" * 64}))
    proc = torch_env.cas(tmp_path / "s", "export-megacache", "main", "-o", str(tmp_path / "o.bin"), ok=False)
    assert proc.returncode == 2 and "no mega-cache entries" in proc.stderr
    assert not (tmp_path / "o.bin").exists()
