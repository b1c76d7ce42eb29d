"""Artifact kinds: cache-dir layout <-> entries, guard variants, GEMM timing merge."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest

from cas.torch import kinds


class Graph:
    """Stands in for torch's pickled entries: an object with a guards_expr field."""

    def __init__(self, guards: str | None, payload: str) -> None:
        self.guards_expr = guards
        self.payload = payload


def _write(root: Path, rel: str, data: bytes) -> None:
    (root / rel).parent.mkdir(parents=True, exist_ok=True)
    (root / rel).write_bytes(data)


def test_scan_finds_every_kind_and_path_for_puts_it_back(tmp_path: Path) -> None:
    fx = pickle.dumps(Graph("2 <= L['t0']", "fx"), protocol=4)
    aot = pickle.dumps(Graph(None, "aot"), protocol=4)
    files = {
        f"fxgraph/ab/fabcd/{kinds.torch_file_hash(fx)}": fx,
        f"aotautograd/aabcd/{kinds.torch_file_hash(aot)}": aot,
        "xy/cxyz.best_config": b"{}",
        "dynamo/code_state_job_0_.pkl": b"pgo",
        "dynamo/deadbeef/entry": b"pre",
        "th/cthdd.so": b"\x7fELF",
        "es/cesyl.main.so": b"\x7fELF2",
        "cache/44136fa3": b'{"cache": {}}',
        "triton/0/hash1/kernel.cubin": b"cubin",
    }
    for rel, data in files.items():
        _write(tmp_path, rel, data)
    # Things that are not artifacts: locks, sources torch rewrites, temporaries.
    for rel in ("locks/x.lock", "th/cthdd.cpp", "w6/cw6.py", "cache/44136fa3.lock"):
        _write(tmp_path, rel, b"junk")
    found = list(kinds.scan(tmp_path))
    assert sorted(f.kind for f in found) == sorted(
        ["inductor", "aot_autograd", "autotune", "pgo", "precompile", "cpp_kernel", "cpp_kernel",
         "gemm_timing", "triton_kernel"])
    for f in found:
        rel = str(f.path.relative_to(tmp_path))
        assert kinds.path_for(f.kind, f.key, files[rel]) == rel


def test_guard_variants_are_deterministic_and_distinct() -> None:
    a1 = pickle.dumps(Graph("2 <= L['t0'] and L['t0'] <= 16", "run 1"), protocol=4)
    a2 = pickle.dumps(Graph("2 <= L['t0'] and L['t0'] <= 16", "run 2, other bytes"), protocol=4)
    b = pickle.dumps(Graph("32 <= L['t0']", "x"), protocol=4)
    static = pickle.dumps(Graph(None, "x"), protocol=4)
    va1, ga1 = kinds.variant_for("inductor", a1, "cpu0")
    assert ga1 == "2 <= L['t0'] and L['t0'] <= 16" and va1.startswith("g-")
    assert kinds.variant_for("inductor", a2, "cpu0")[0] == va1
    assert kinds.variant_for("inductor", b, "cpu0")[0] not in (va1, "")
    assert kinds.variant_for("aot_autograd", static, "cpu0") == ("", None)
    assert kinds.variant_for("cpp_kernel", b"\x7fELF", "cpu0") == ("cpu-cpu0", None)
    assert kinds.guards_of(b"not a pickle") == []


@pytest.mark.parametrize("protocol", [4, 5])  # what torch pickles its entries with
def test_guards_are_read_only_from_a_value_that_holds_the_field_name(protocol: int) -> None:
    # A value whose bytes do not hold the field's name is not walked (the Redis door's
    # commit process reads every SET this way); one that does is walked as before.
    assert kinds.guards_of(pickle.dumps(Graph("s0 <= 16", "x"), protocol=protocol)) == ["s0 <= 16"]
    assert kinds.guards_of(pickle.dumps(Graph(None, "x"), protocol=protocol)) == [None]
    assert kinds.guards_of(pickle.dumps({"payload": "guards"}, protocol=protocol)) == []


def test_gemm_timings_merge_and_existing_values_win() -> None:
    old = {"system": "s", "cache": {"mm": {"k1": {"highest": {"a": 1.0}}}}}
    new = {"system": "s", "cache": {"mm": {"k1": {"highest": {"a": 9.0, "b": 2.0}}, "k2": {}},
                                    "packed_linear": {"k": {}}}}
    merged = json.loads(kinds.merge_gemm_timings(json.dumps(old).encode(), json.dumps(new).encode()))
    assert merged["cache"]["mm"]["k1"]["highest"] == {"a": 1.0, "b": 2.0}
    assert set(merged["cache"]) == {"mm", "packed_linear"} and "k2" in merged["cache"]["mm"]
    assert kinds.merge_gemm_timings(b"{}", b"not json") == b"{}"


def test_unknown_kind_has_no_path() -> None:
    with pytest.raises(ValueError):
        kinds.path_for("mystery", "k", b"")
