"""Helpers of the live-backend tests: run live_workload.py or ``cas`` in fresh processes.

The one cold compile (``recorded``) is shared by every test of the session through a
module-level cache: a fresh process enables cas with ``record="main"`` on an empty store
and an empty torch cache dir, so the store ends up holding exactly what the live backend
and its flush recorded. Tests that write copy that store first. Two more runs are shared the same way: ``served``
(``cas run`` of a program that also flushes explicitly) and ``checks`` (seven independent
runs in one process, so they pay for one import of torch, not seven).

Every process gets the test run's own ``TMPDIR`` (set by tests/torch/conftest.py, shared
by the xdist workers), which holds torch's default dir and so its precompiled header,
never the user's.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from torchkit import seed_kernels

from cas import manifest
from cas.codec import ObjType
from cas.history import commit_changes
from cas.objects import Entry, EntryKey, Env
from cas.refs import load_commit, resolve
from cas.store import Store

HERE = Path(__file__).resolve().parent
WORKLOAD = HERE / "live_workload.py"
CAS = str(Path(sys.executable).parent / "cas")
MARKER = "CAS-LIVE "
SEGMENT = "CAS-SCENARIO "


@dataclass
class Proc:
    """A finished process: exit code, output, and the workload's JSON line if any."""

    rc: int
    stdout: str
    stderr: str
    out: dict[str, Any] | None

    def cas_warnings(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if "CasWarning" in line]

    def counter(self, group: str, name: str) -> int:
        assert self.out is not None, self.stderr[-3000:]
        return int(self.out["counters"].get(group, {}).get(name, 0))


#: The test run's TMPDIR for torch processes (torch's default dir: precompiled headers).
TMPDIR: Path | None = None


def base_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("CAS_DIR", "TORCHINDUCTOR_CACHE_DIR")}
    env.update(CAS_AUTHOR="tester@example", PYTHONWARNINGS="default")
    if TMPDIR is not None:
        env["TMPDIR"] = str(TMPDIR)
    env.update(extra)
    return env


def _finish(proc: subprocess.CompletedProcess[str]) -> Proc:
    out = None
    for line in proc.stdout.splitlines():
        if line.startswith(MARKER):
            out = json.loads(line[len(MARKER) :])
    return Proc(proc.returncode, proc.stdout, proc.stderr, out)


def workload(cache_dir: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 300) -> Proc:
    """Run live_workload.py in a fresh process with ``cache_dir`` as torch's cache dir."""
    full = dict(env or base_env(), TORCHINDUCTOR_CACHE_DIR=str(cache_dir))
    proc = subprocess.run(
        [sys.executable, str(WORKLOAD), *args], env=full, capture_output=True, text=True, timeout=timeout
    )
    return _finish(proc)


def cas(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> Proc:
    """Run the real ``cas`` command line."""
    proc = subprocess.run([CAS, *args], env=env or base_env(), capture_output=True, text=True, timeout=timeout)
    return _finish(proc)


def copy_store(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


@dataclass
class Recorded:
    """The session's cold run: its store, its cache dir and what it printed."""

    store: Path
    cache_dir: Path
    run: Proc


_recorded: Recorded | None = None

#: The xdist group of the modules that start from :func:`recorded` (or :func:`checks`,
#: which starts from it): ``pytestmark = SHARES_RECORDED``. Cached per process, that run
#: is paid once per test run only if they all run on one worker (tests/conftest.py).
SHARES_RECORDED = pytest.mark.xdist_group("torch-recorded")


def recorded(tmp_path_factory: pytest.TempPathFactory) -> Recorded:
    """The cold run, done once per session (MLP inference and training, record=main)."""
    global _recorded
    if _recorded is None:
        base = tmp_path_factory.mktemp("live-recorded")
        store, cache = base / "store", base / "cache"
        run = workload(cache, "--store", str(store), "--record", "main", "--mode", "both", timeout=600)
        assert run.rc == 0 and run.out is not None, run.stderr[-4000:]
        _recorded = Recorded(store, cache, run)
    return _recorded


def served(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Proc]:
    """``cas run --record exp`` of a program compiling mlp (in the store) and mlp-wide
    (new) that flushes explicitly and exits 3, on a copy of the recorded store and an
    empty cache dir, reporting its misses; once per session (test_run and test_live
    assert on it)."""
    global _served
    if _served is None:
        rec = recorded(tmp_path_factory)
        base = tmp_path_factory.mktemp("live-served")
        store = copy_store(rec.store, base / "store")
        run = cas("--store", str(store), "run", "--record", "exp", "--report-misses", "--",
                  sys.executable, str(WORKLOAD), "--models", "mlp,mlp-wide", "--flush", "--exit", "3",
                  env=base_env(TORCHINDUCTOR_CACHE_DIR=str(base / "cache")))
        _served = (store, run)
    return _served


_served: tuple[Path, Proc] | None = None


@dataclass
class Checks:
    """The runs of :func:`checks`, by name, and the cache dir each started from."""

    runs: dict[str, Proc]
    caches: dict[str, Path]


_checks: Checks | None = None


def checks(tmp_path_factory: pytest.TempPathFactory) -> Checks:
    """Independent runs of the recorded MLP, one after the other in one fresh process
    (live_workload.py ``--scenarios``: each its own cache dir, torch's in-memory caches
    cleared, dynamo reset, counters zeroed, cas's warnings re-armed), so they share one
    import of torch instead of each paying its own. Once per session. In order:

    * ``plain``: no cas (not even imported yet), on a copy of the recording run's own
      cache dir (test_live);
    * ``live``: cas without hydrate, kernels seeded (test_live);
    * ``hydrate``: cas with hydrate, on an empty cache dir (test_live);
    * ``corrupt-dir``, ``store-file``, ``corrupt-blobs``, ``other-env``: broken stores
      and bad entries, kernels seeded (test_safety);
    * ``backend-no-store``: ``backend="cas"`` with ``CAS_DIR`` a file, last, as it sets
      the environment and the backend enables cas once per process (test_backend).
    """
    global _checks
    if _checks is None:
        rec = recorded(tmp_path_factory)
        base = tmp_path_factory.mktemp("live-checks")
        corrupt_dir = base / "stores" / "corrupt-dir"
        corrupt_dir.mkdir(parents=True)
        (corrupt_dir / "data.mdb").write_bytes(b"this is not an lmdb file" * 100)
        a_file = base / "stores" / "store-file"
        a_file.write_text("not a directory")
        stores = {
            "corrupt-dir": corrupt_dir,
            "store-file": a_file,
            "corrupt-blobs": rewrite(rec.store, base / "stores" / "corrupt-blobs", _corrupt),
            "other-env": rewrite(rec.store, base / "stores" / "other-env", _move_to(_other_env(rec.store))),
        }
        blocker = base / "stores" / "not-a-dir"
        blocker.write_text("a file where the store should be")
        caches = {"plain": Path(shutil.copytree(rec.cache_dir, base / "caches" / "plain"))}
        specs: list[dict[str, Any]] = [{"name": "plain", "args": ["--mode", "both"]}]
        specs.append({"name": "live", "args": ["--store", str(rec.store), "--no-hydrate", "--mode", "both"]})
        specs.append({"name": "hydrate", "args": ["--store", str(rec.store), "--mode", "both"]})
        caches["hydrate"] = base / "caches" / "hydrate"  # empty: every kernel must come from the store
        caches["hydrate"].mkdir(parents=True)
        specs += [{"name": n, "args": ["--store", str(p), "--mode", "infer"]} for n, p in stores.items()]
        specs.append({"name": "backend-no-store", "args": ["--backend", "cas", "--mode", "infer"],
                      "env": {"CAS_DIR": str(blocker), "CAS_RECORD": ""}})
        # "plain" must see a process where cas was never imported; backend="cas" enables
        # cas once per process, so its run comes last.
        assert specs[0]["name"] == "plain" and specs[-1]["name"] == "backend-no-store"
        for spec in specs:
            if spec["name"] not in caches:
                caches[spec["name"]] = seed_kernels(rec.cache_dir, base / "caches" / spec["name"])
            spec["cache_dir"] = str(caches[spec["name"]])
        _checks = Checks(scenarios(base, specs), caches)
    return _checks


def scenarios(base: Path, specs: list[dict[str, Any]]) -> dict[str, Proc]:
    """Run ``specs`` in one process of live_workload.py; one :class:`Proc` per scenario,
    with the process's exit code (1 if the scenario raised), the scenario's own part of
    stderr (the part before the first scenario goes to the first) and its JSON."""
    listing = base / "scenarios.json"
    listing.write_text(json.dumps(specs))
    proc = workload(base / "unused-cache", "--scenarios", str(listing), timeout=600)
    assert proc.rc == 0 and proc.out is not None, proc.stderr[-4000:]
    parts: dict[str, list[str]] = {}
    current: list[str] = []
    for line in proc.stderr.splitlines():
        if line.startswith(SEGMENT):
            current = parts.setdefault(line[len(SEGMENT) :], current if not parts else [])
        else:
            current.append(line)
    runs = {}
    for spec in specs:
        out = proc.out["scenarios"].get(spec["name"])
        stderr = "\n".join(parts.get(spec["name"], []))
        if out is None or "error" in out:
            runs[spec["name"]] = Proc(1, "", stderr + "\n" + str(out and out["error"]), None)
        else:
            runs[spec["name"]] = Proc(proc.rc, "", stderr, out)
    return runs


def rewrite(src: Path, dst: Path, change: Any) -> Path:
    """A store whose main holds ``change(store, key, entry, data)`` for each entry of src's."""
    with Store(src) as old, Store.init(dst) as new:
        root = load_commit(old, resolve(old, "main")).manifest
        changes = {}
        for k, e in manifest.entries(old, root):
            new.objects.put(old.objects.get(k.env), ObjType.ENV)
            k2, e2 = change(new, k, e, old.objects.get(e.blob))
            changes[k2] = e2
        commit_changes(new, "main", changes, "rewritten")
    return dst


def _corrupt(store: Store, k: EntryKey, e: Entry, data: bytes) -> tuple[EntryKey, Entry]:
    """FX and AOT blobs stored under ids they do not hash to; the rest intact."""
    if k.kind in ("inductor", "aot_autograd"):
        # A fault injected below the store's own checks: bytes stored under an id
        # they do not hash to, as a flipped bit on disk would leave them.
        store.objects.write([(e.blob, ObjType.BLOB, data[:100] + b"\x00" + data[101:])], verified=True)
    else:
        store.objects.put(data)
    return k, e


def _other_env(src: Path) -> Env:
    """The env of src's entries, with another torch."""
    with Store(src) as s:
        k0 = next(k for k, _ in manifest.entries(s, load_commit(s, resolve(s, "main")).manifest))
        fields = dict(Env.decode(s.objects.get(k0.env)).fields)
    return Env({**fields, "torch_key": "0" * 64, "torch_version": "2.99.0"})


def _move_to(other: Env) -> Any:
    """Every entry moved under ``other``."""

    def move(store: Store, k: EntryKey, e: Entry, data: bytes) -> tuple[EntryKey, Entry]:
        store.objects.put_object(other)
        store.objects.put(data)
        return EntryKey(other.id, k.kind, k.key, k.variant), e

    return move
