"""Hydrate is confined: keys that break their kind's grammar (``../``, absolute paths,
separators) are refused at commit, counted and skipped at hydrate, and nothing is ever
written outside the target dirs; files get the modes torch would give them."""

from __future__ import annotations

import json
import stat
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from cas import entrykeys, manifest, tuning
from cas.codec import ObjType
from cas.digest import ObjectId
from cas.errors import BadEntryKey
from cas.history import commit_changes
from cas.objects import Commit, Entry, EntryKey, Env, ManifestNode
from cas.store import Store
from cas.torch import kinds
from cas.torch.env import cpu_fingerprint
from cas.torch.hydrate import hydrate

GOOD = {
    "inductor": "fq7ymtjb7xy4cjlq6dqgl2g2g3wvdnbrtfnr5ae3hblqtc3zs6wz",
    "aot_autograd": "ah3tz7ktkxvvrfugeacldsgqmqttdgkgkstvvr6vzqpsb6bx2tpjp",
    "autotune": "c3/c3bxv3s7iv3qzh6o6k5n2dl4vd5mvoqg6pkqxqa2bx4ubr7pcq2p.best_config",
    "pgo": "_home_me_train.py_12_forward",
    "precompile": "model_forward_a1b2c3",
    "cpp_kernel": "cx/cxg7pfa3nakmqexi2fgiblhtm6ryb4rcbw4k3b6xvkkrdqwmzhsy.so",
    "gemm_timing": "4d8b5d2c0e4c6e0c1f2a3b4c5d6e7f80",
    "triton_kernel": "cpu/6BKQ4GCXLPFUH43LTL6N5YFPTGL2CMZ4F2ZHJ3HJPQ7GVV4D2K2A/triton_.json",
    "cpp_pch": "cpp_prefix.h.gch",
}
EVIL = {
    "inductor": ["f/../../../x", "..", "/etc/passwd", "fab\x00c"],
    "aot_autograd": ["../../x", "a/b", ".hidden"],
    "autotune": ["../../evil.best_config", "/tmp/evil.best_config", "ab/../../e.best_config"],
    "pgo": ["../x", "a/b", "x\\y"],
    "precompile": ["../../x", "/abs", "a/../.."],
    "cpp_kernel": ["ab/../../../evil.so", "/home/me/.local/lib/evil.so", "../evil.so"],
    "gemm_timing": ["../x", "/etc/x"],
    "triton_kernel": ["../../../../evil.so", "cpu/../../x", "/tmp/a/b/c"],
    "cpp_pch": ["../../x.gch", "/tmp/x.gch"],
}


@pytest.mark.parametrize("kind", sorted(EVIL))
def test_grammar_admits_torch_keys_and_refuses_paths(kind: str) -> None:
    assert entrykeys.problem(kind, GOOD[kind]) is None
    for key in EVIL[kind]:
        assert entrykeys.problem(kind, key) is not None, key
    assert entrykeys.problem("a_kind_cas_never_writes", "../anything") is None


def _env(store: Store) -> Env:
    env = Env({"torch_version": "test", "device": "cpu"})
    store.objects.put_object(env)
    return env


def test_commit_refuses_a_key_breaking_its_grammar(store: Store) -> None:
    env = _env(store)
    blob = store.objects.put(b"\x7fELF not really")
    with pytest.raises(BadEntryKey):
        commit_changes(store, "main", {EntryKey(env.id, "cpp_kernel", "ab/../../../evil.so", "x"): Entry(blob, 15)}, "m")
    assert store.refs.get("refs/heads/main") is None


def _commit_raw(store: Store, entries: dict[EntryKey, Entry]) -> None:
    """A commit whose manifest holds ``entries`` as they are, as a hostile peer makes it
    (leaf rows written directly, not through the checked commit path)."""
    rows = sorted(
        ([k.env.raw, k.kind, k.key, k.variant, e.blob.raw, e.size, None, {}] for k, e in entries.items()),
        key=lambda r: manifest.key_hash(EntryKey(ObjectId(r[0]), r[1], r[2], r[3])),
    )
    root = store.objects.put(ManifestNode.encode_leaf(0, rows), ObjType.NODE)
    commit = store.objects.put_object(Commit(root, (), "attacker", 1, "evil"))
    store.refs.set("refs/heads/main", commit, expected=None)


def test_hydrate_writes_nothing_outside_and_counts_bad_keys(store: Store, tmp_path: Path) -> None:
    env = _env(store)
    cpu = f"cpu-{cpu_fingerprint()}"
    outside = tmp_path / "victim"
    outside.mkdir()
    cache, pch = tmp_path / "a" / "b" / "cache", tmp_path / "a" / "b" / "pch"
    blob = store.objects.put(b"\x7fELF payload")
    entries = {}
    for kind, keys in EVIL.items():
        variant = cpu if kind in kinds.CPU_BOUND_KINDS else ""
        for key in keys:
            entries[EntryKey(env.id, kind, key.replace("/tmp/", f"{outside}/").replace("/etc/", f"{outside}/"), variant)] = Entry(blob, 12)
    good = {EntryKey(env.id, k, v, cpu if k in kinds.CPU_BOUND_KINDS else ""): Entry(blob, 12) for k, v in GOOD.items()
            if k not in kinds.GUARDED_KINDS and k != "gemm_timing"}
    _commit_raw(store, {**entries, **good})
    with pytest.warns(UserWarning, match="does not match"):
        res = hydrate(store, "main", cache, env=env, pch_dir=pch, check_policy=False)
    assert res.bad_keys == len(entries)
    assert res.written == len(good)
    written = [p for p in tmp_path.rglob("*") if p.is_file() and not p.is_relative_to(store.path)]
    assert written and all(p.is_relative_to(cache) or p.is_relative_to(pch) for p in written), written
    for p in written:
        mode = stat.S_IMODE(p.stat().st_mode)
        assert mode == (0o777 if p.suffix == ".so" else 0o666) & ~kinds._UMASK, (p, oct(mode))


def test_a_symlink_inside_the_cache_dir_does_not_lead_out(store: Store, tmp_path: Path) -> None:
    env = _env(store)
    cache = tmp_path / "cache"
    cache.mkdir()
    outside = tmp_path / "victim"
    outside.mkdir()
    (cache / "cx").symlink_to(outside)
    blob = store.objects.put(b"\x7fELF payload")
    cpu = f"cpu-{cpu_fingerprint()}"
    commit_changes(store, "main", {EntryKey(env.id, "cpp_kernel", GOOD["cpp_kernel"], cpu): Entry(blob, 12)}, "m")
    with pytest.raises(BadEntryKey, match="outside"):
        hydrate(store, "main", cache, env=env, check_policy=False)
    assert not any(outside.iterdir())


# -- autotune records (issue 16, point 14) ---------------------------------------------------

#: Prints this process's env and device class: what the ``cas`` processes of torch_env see.
HERE = ("import json; from cas.torch.env import current_env; from cas.torch.autotune import device_class; "
        "print('HERE ' + json.dumps({'env': current_env().encode().hex(), 'cls': device_class()}))")
BEST = {"XBLOCK": 64, "num_warps": 4, "num_stages": 2, "configs_hash": "c" * 64, "found_by_coordesc": False}
TIMING_FILE = (Path(__file__).parent.parent / "data" / "autotune" / "cpu-timing-file.json").read_bytes()


def _evil_records(good: tuning.Record, gemm: tuning.Record, victim: Path, fx_rel: str) -> list[tuning.Record]:
    """Records a hostile peer may hand over: each names a file not its own, or is malformed."""

    def at(path: str, **change: Any) -> tuning.Record:
        return replace(good, key=f"triton/{path}", source={**good.source, "path": path}, **change)

    return [
        at("../victim/a.best_config"),
        at(f"{victim}/b.best_config"),
        at(fx_rel),  # an FX entry's file, inside the cache dir
        replace(gemm, source={**gemm.source, "path": fx_rel}),  # a timing "file" over it
        replace(good, key="triton/cd/cdnot.best_config", source="garbage"),  # type: ignore[arg-type]
        replace(good, key="triton/ce/cenocontent.best_config", source={"path": "ce/cenocontent.best_config"}),
        at("cf/cfimpossible.best_config", time_ms=-1.0, candidates={"x": -1.0}),
    ]


def test_cas_hydrate_writes_records_only_into_their_own_files(torch_env: Any, tmp_path: Path) -> None:
    here = torch_env.python(tmp_path / "probe", "-c", HERE, marker="HERE ")
    env, cls = Env.decode(bytes.fromhex(here["env"])), here["cls"]
    cache, victim = tmp_path / "a" / "cache", tmp_path / "victim"
    victim.mkdir()
    fx_key, fx_bytes = GOOD["inductor"], b"\x80pickled FX entry"
    fx_rel = kinds.path_for("inductor", fx_key, fx_bytes)
    good = tuning.from_best_config(json.dumps(BEST).encode(), "ab/cabgood.best_config", cls, {"host": "h"})
    gemm = next(tuning.from_timing_file(TIMING_FILE, "cache/4413", cls, {"host": "h"}))
    assert good is not None
    evil = _evil_records(good, gemm, victim, fx_rel)
    with Store.init(tmp_path / "store") as store:
        store.objects.put_object(env)
        changes = {EntryKey(env.id, "inductor", fx_key, ""): Entry(store.objects.put(fx_bytes), len(fx_bytes))}
        for rec in [good, *evil]:
            blob = rec.to_bytes()
            changes[EntryKey(env.id, tuning.KIND, rec.key, cls)] = Entry(store.objects.put(blob), len(blob), None,
                                                                          tuning.entry_meta(rec))
        commit_changes(store, "main", changes, "a peer's records")

    proc = torch_env.cas(tmp_path / "store", "hydrate", "main", "--cache-dir", str(cache))  # exits 0
    warned = [line for line in proc.stderr.splitlines() if line.startswith("cas: warning: skipping autotune record")]
    assert "Traceback" not in proc.stderr and len(warned) == len(evil), proc.stderr
    assert all(any(repr(rec.key[:80]) in line for line in warned) for rec in evil), warned
    assert f"{len(evil)} malformed autotune records" in proc.stdout, proc.stdout
    assert (cache / fx_rel).read_bytes() == fx_bytes  # the FX entry is torch's, unchanged
    assert json.loads((cache / "ab" / "cabgood.best_config").read_bytes()) == BEST  # the good record is written
    written = {str(p.relative_to(cache)) for p in cache.rglob("*") if p.is_file()}
    assert written == {fx_rel, "ab/cabgood.best_config"}, written
    assert not any(victim.iterdir())
