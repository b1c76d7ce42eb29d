"""Precompiled start: a new machine loads dynamo's precompiled unit from the store, so the
first call skips tracing where the unit's guards pass; anything else traces, never runs
stale code, and the summary of ``cas run`` says which (docs/torch.md, "Precompiled start").

One recording process (``cas run --precompile --record``), then new machines (``cas run
--precompile --ref``: each a store cloned from the recording's by ``cas clone``, a fresh
torch cache dir and TMPDIR): the unit is loaded; a changed input
shape, a changed model source, another env and an untrusted remote each trace instead, and
every output equals eager's. Where one program run proves two things, one process does
(the recorded batch, then a changed one; a training step, then inference; another env
that records into a copy of the store while recording its unit fails): each process
pays an import of torch and inductor (~6 CPU-s) whatever it proves.

The other recording processes (each front door, the decorated model's two programs,
another env's), and the two new machines that get nothing from the store (another env,
an untrusted remote), start from the first one's C++ kernels
(:func:`torchkit.seed_kernels`: code only, no FX, AOT or dynamo entries), so they trace,
compile and record as on an empty cache dir without waiting on g++ for the ISA probe and
the model's kernel; the new machines that load from the store start empty."""

from __future__ import annotations

import dataclasses
import json
import pickle
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from livekit import Proc, base_env, cas
from torchkit import seed_kernels

from cas import manifest
from cas.history import commit_changes
from cas.objects import Entry, EntryKey, Env
from cas.refs import load_commit, resolve
from cas.store import Store
from cas.torch.env import ensure_env

HERE = Path(__file__).resolve().parent


def _program(dst: Path) -> Path:
    dst.mkdir(parents=True)
    for name in ("precompile_program.py", "precompile_door.py", "pmodel.py", "pdecorated.py", "pdeco.py"):
        shutil.copy(HERE / name, dst / name)
    return dst / "precompile_program.py"


def _run(store: Path, program: Path, batch: int | str, *opts: str, trusted: bool = True,
         **env: str) -> tuple[Proc, dict]:
    """``cas run --precompile`` of the program, with the batch size (or sizes, "4,7"): its
    ``PRE`` line, every call's output checked against eager's. A new machine (``--ref``
    without ``--record``) runs on a store of its own, cloned from ``store`` (remote
    ``team``, trusted unless said otherwise), with an empty TMPDIR of its own, where torch
    keeps precompiled headers; recording processes share the test run's."""
    if "--ref" in opts and "--record" not in opts:
        store = _clone(store, program.parent, trusted)
        env.setdefault("TMPDIR", tempfile.mkdtemp(prefix="machine-tmp-", dir=program.parent))
    proc = cas("--store", str(store), "run", "--precompile", *opts, "--", sys.executable, str(program), str(batch),
               env=base_env(**env), timeout=600)
    assert proc.rc == 0, proc.stderr[-4000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("PRE "))
    out = json.loads(line[4:])
    assert out["equal"] is True  # every call's output equals eager's
    return proc, out


def _clone(store: Path, root: Path, trusted: bool) -> Path:
    """A new machine's store: ``cas clone`` of ``store`` over the path transport."""
    dst = Path(tempfile.mkdtemp(prefix="machine-store-", dir=root)) / "store"
    proc = cas("clone", str(store), str(dst), "--name", "team", *(["--trusted"] if trusted else []), env=base_env())
    assert proc.rc == 0, proc.stderr[-3000:]
    return dst


def _summary(proc: Proc) -> str:
    return next(x for x in proc.stderr.splitlines() if x.startswith("cas run: precompiled start:"))


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """The module's one cold recording: its store, its program, and its torch cache dir
    (kept with ``--cache-dir``, for the later recording processes' C++ kernels)."""
    base = tmp_path_factory.mktemp("precompile")
    store, program, cache = base / "store", _program(base / "program"), base / "cache"
    proc, out = _run(store, program, 4, "--record", "main", "--cache-dir", str(cache))
    assert out["traced"] == 1
    with Store(store) as s:
        kinds = {k.kind for k, _ in manifest.entries(s, load_commit(s, resolve(s, "main")).manifest)}
    assert "precompile" in kinds, proc.stderr[-3000:]
    return store, program, cache


@pytest.fixture(scope="module")
def recorded(recording: tuple[Path, Path, Path]) -> tuple[Path, Path]:
    return recording[0], recording[1]


def test_a_new_machine_loads_the_unit_skips_tracing_and_traces_a_changed_input_shape(
    recorded: tuple[Path, Path]
) -> None:
    store, program = recorded
    # One new machine proves both (one import of torch, not two): its program calls the
    # model with the recorded batch (4), then with another (7).
    proc, out = _run(store, program, "4,7", "--ref", "main")
    recorded_shape, changed_shape = out["calls"]
    # Batch 4: the unit is loaded and its guards pass; nothing is traced.
    assert recorded_shape["traced"] == 0 and recorded_shape["dynamo_cache"] == {"dynamo_cache_hit": 1}
    # Batch 7: the unit's guards (batch 4) fail, and dynamo traces batch 7.
    assert changed_shape["traced"] == 1 and changed_shape["dynamo_cache"] == {"dynamo_cache_hit": 1}
    assert _summary(proc) == "cas run: precompiled start: 1 unit(s) loaded, 1 frame(s) traced"


def test_a_changed_model_source_is_refused_with_its_reason(recorded: tuple[Path, Path], tmp_path: Path) -> None:
    store, _ = recorded
    program = _program(tmp_path / "program")
    model = program.parent / "pmodel.py"
    # Same function, same line (the unit's key): only the body differs.
    model.write_text(model.read_text().replace("torch.relu(self.a(x))", "torch.tanh(self.a(x))"))
    proc, out = _run(store, program, 4, "--ref", "main")
    assert out["traced"] == 1
    assert _summary(proc) == "cas run: precompiled start: 0 unit(s) loaded, 1 frame(s) traced"
    assert "precompiled unit not used (Source code changes detected for pmodel" in proc.stderr


def _units(s: Store) -> list[tuple[EntryKey, Entry]]:
    tip = load_commit(s, resolve(s, "main")).manifest
    return [(k, e) for k, e in manifest.entries(s, tip) if k.kind == "precompile"]


def _copy(store: Path, dst: Path) -> Path:
    shutil.copytree(store, dst)
    return dst


def test_a_unit_recorded_under_another_torch_never_reaches_torch(recorded: tuple[Path, Path],
                                                                 tmp_path: Path) -> None:
    store, program = recorded
    copy = _copy(store, tmp_path / "store")
    with Store(copy) as s:  # the units as another torch build recorded them: its env differs
        changes: dict[EntryKey, Entry | None] = {}
        for k, e in _units(s):
            other = Env({**Env.decode(s.objects.get(k.env)).fields, "torch_key": "0" * 64, "torch_version": "2.99.0"})
            changes[k] = None
            changes[dataclasses.replace(k, env=ensure_env(s, other))] = e
        commit_changes(s, "main", changes, "units of torch 2.99.0")
    proc, out = _run(copy, program, 4, "--ref", "main")
    assert out["traced"] == 1 and out["dynamo_cache"] == {"dynamo_cache_miss": 1}
    assert _summary(proc) == "cas run: precompiled start: 0 unit(s) loaded, 1 frame(s) traced"


def test_a_unit_that_says_another_torch_made_it_is_refused(recorded: tuple[Path, Path], tmp_path: Path) -> None:
    store, program = recorded
    copy = _copy(store, tmp_path / "store")
    with Store(copy) as s:  # filed under this env (as an import of a foreign container would be)
        changes: dict[EntryKey, Entry | None] = {}
        for k, e in _units(s):
            unit = pickle.loads(s.objects.get(e.blob))  # our own recording, in the test process
            unit.dynamo.system_info = dataclasses.replace(unit.dynamo.system_info, torch_version="2.99.0")
            data = pickle.dumps(unit)
            changes[k] = dataclasses.replace(e, blob=s.objects.put(data), size=len(data))
        commit_changes(s, "main", changes, "a unit of torch 2.99.0")
    proc, out = _run(copy, program, 4, "--ref", "main")
    assert out["traced"] == 1 and out["fx_hit"] == 1
    assert _summary(proc) == "cas run: precompiled start: 0 unit(s) loaded, 1 frame(s) traced"
    assert ("precompiled unit not used (Compile package was created with a different PyTorch version: 2.99.0), "
            "traced") in proc.stderr


def test_a_unit_from_an_untrusted_remote_is_never_loaded(recording: tuple[Path, Path, Path],
                                                        tmp_path: Path) -> None:
    store, program, kernels = recording
    # The new machine clones the store from remote 'team' without --trusted. Nothing of
    # the store reaches torch, so it compiles everything: it starts from this machine's
    # own C++ kernels (the recording's, code only), never the store's.
    cache = seed_kernels(kernels, tmp_path / "cache")
    proc, out = _run(store, program, 4, "--ref", "main", "--cache-dir", str(cache), trusted=False)
    assert "untrusted remote 'team'" in proc.stderr
    assert out["traced"] == 1 and out["dynamo_cache"] == {"dynamo_cache_miss": 1}


def test_a_unit_torch_cannot_install_is_refused_and_the_program_runs(recorded: tuple[Path, Path]) -> None:
    store, program = recorded
    # torch cannot rebuild the unit's guards here (as when a value pickled as _Missing):
    # the unit is refused with its reason, the function traced, its FX graph hit.
    proc, out = _run(store, program, 4, "--ref", "main", PRE_FAULT="install")
    assert out["traced"] == 1 and out["fx_hit"] == 1
    assert _summary(proc) == "cas run: precompiled start: 0 unit(s) loaded, 1 frame(s) traced"
    assert "precompiled unit not used (TypeError: injected fault: '_Missing' object in install), traced" \
        in proc.stderr


def test_another_env_never_gets_the_unit_and_a_unit_that_fails_while_recorded_is_dropped(
    recording: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    # One process proves both (one import of torch, not two): it runs in another env
    # (nothing of the store is for it), so it traces and compiles everything and records
    # it into a copy of the store, where recording its unit fails.
    store, program, kernels = recording
    copy = _copy(store, tmp_path / "store")
    with Store(copy) as s:
        envs = {k.env for k, _ in manifest.entries(s, load_commit(s, resolve(s, "main")).manifest)}
    # It compiles everything: it starts from the recording's C++ kernels (code only: FX
    # and dynamo miss), as the recording processes do.
    cache = seed_kernels(kernels, tmp_path / "cache")
    # The key tag is part of the env, as the torch and Python versions and the device are.
    proc, out = _run(copy, program, 4, "--ref", "main", "--record", "main", "--cache-dir", str(cache),
                     TORCH_COMPILE_CACHE_KEY_TAG="other-build", PRE_FAULT="record")
    assert out["traced"] == 1 and out["dynamo_cache"] == {"dynamo_cache_miss": 1}
    # The unit that failed while recorded is dropped, and the compile goes on: the rest of
    # what this env compiled is recorded.
    assert "precompiled unit not recorded (TypeError: injected fault: '_Missing' object in record)" in proc.stderr
    with Store(copy) as s:
        kinds = {k.kind for k, _ in manifest.entries(s, load_commit(s, resolve(s, "main")).manifest)
                 if k.env not in envs}
    assert "precompile" not in kinds and "inductor" in kinds


@pytest.mark.parametrize("door", ["enable", "backend", "capture"])
def test_every_front_door_records_a_unit_a_new_machine_loads(
    door: str, recording: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    store, program = tmp_path / "store", _program(tmp_path / "program")
    # This machine's torch cache dir: the first recording's C++ kernels, and nothing else.
    cache = seed_kernels(recording[2], tmp_path / "cache")
    env = base_env(TORCHINDUCTOR_CACHE_DIR=str(cache), CAS_DIR=str(store))
    if door != "enable":  # the process turned caching precompile on itself
        env["TORCH_CACHING_PRECOMPILE"] = "1"
    proc = subprocess.run([sys.executable, str(program.parent / "precompile_door.py"),
                           "plain" if door == "capture" else door, str(store)],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and '"equal": true' in proc.stdout, proc.stderr[-4000:]
    if door == "capture":
        assert cas("init", str(store), env=base_env()).rc == 0
        captured = cas("--store", str(store), "capture", "--cache-dir", str(cache), "-m", "units", env=base_env())
        assert captured.rc == 0, captured.stderr
    with Store(store) as s:
        assert len(_units(s)) == 1
    loaded, out = _run(store, program, 4, "--ref", "main")
    assert out["traced"] == 0 and out["dynamo_cache"] == {"dynamo_cache_hit": 1}
    assert _summary(loaded) == "cas run: precompiled start: 1 unit(s) loaded, 0 frame(s) traced"


@pytest.fixture(scope="module")
def decorated(recording: tuple[Path, Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store recorded by two programs calling pdecorated.py's model (``PRE_MODEL=
    decorated``): a training step, then inference under ``no_grad``. Both compile the
    same ``forward``, so both units have one source id: the branch keeps one unit
    holding the guarded codes of both. The training step starts from the first
    recording's C++ kernels (code only), as the other recording processes do; inference
    from the training step's (code only: its FX, AOT and dynamo caches still miss), which
    hold every kernel it builds."""
    base = tmp_path_factory.mktemp("decorated")
    store, program = base / "store", _program(base / "program")
    train = seed_kernels(recording[2], base / "train-cache")
    _, out = _run(store, program, 4, "--record", "main", "--cache-dir", str(train), PRE_MODEL="decorated")
    # The getter breaks the graph: forward, the getter and their resume functions are traced.
    assert out["traced"] > 1
    infer = seed_kernels(train, base / "infer-cache")
    _, out = _run(store, program, 4, "--record", "main", "--cache-dir", str(infer), PRE_MODEL="decorated",
                  PRE_STEP="infer")
    assert out["traced"] > 1  # the training step's guards fail under no_grad
    with Store(store) as s:
        assert len(_units(s)) == 1
    return store


def test_a_decorated_forward_loads_on_a_new_machine_for_each_program(decorated: Path, tmp_path: Path) -> None:
    # As transformers writes GPT-2: its forward decorated with functools.wraps, its loss
    # taken through a property getter that breaks the graph. Without cas's fixes torch
    # files the unit under the wrapped function's module and drops a module global its
    # bytecode loads by id (the loaded unit ends the program with a NameError), it finds
    # no name for the getter's frame (no unit is recorded), and the branch keeps the
    # first program's unit only, whose guards fail for the other (docs/torch.md).
    # One new machine runs both programs' steps (one import of torch, not two): a
    # training step, then inference under no_grad; each is served by the unit.
    program = _program(tmp_path / "program")
    proc, out = _run(decorated, program, 4, "--ref", "main", PRE_MODEL="decorated", PRE_STEP="both")
    assert out["traced"] == 0  # and every output (the loss and every grad too) equals eager's
    assert _summary(proc) == "cas run: precompiled start: 1 unit(s) loaded, 0 frame(s) traced"


def test_a_merge_that_adds_nothing_or_mixes_sources_keeps_the_branchs_unit(decorated: Path) -> None:
    from cas.torch._compat import merge_units

    with Store(decorated) as s:
        ((_, e),) = _units(s)
        unit = s.objects.get(e.blob)
    assert merge_units(unit, unit) is None  # nothing new: a process that loaded it and traced nothing
    stale = pickle.loads(unit)  # our own recording, in the test process
    stale.dynamo.source_info.inlined_sources = {dataclasses.replace(x, checksum="0" * 64)
                                                for x in stale.dynamo.source_info.inlined_sources}
    assert merge_units(unit, pickle.dumps(stale)) is None  # made from other source lines


def test_a_changed_property_getter_is_refused_with_its_reason(decorated: Path, tmp_path: Path) -> None:
    program = _program(tmp_path / "program")
    model = program.parent / "pdecorated.py"
    # The getter's body only: were the unit's code for it run, the loss would differ from eager's.
    model.write_text(model.read_text().replace("return mean_square", "return mean_abs"))
    proc, out = _run(decorated, program, 4, "--ref", "main", PRE_MODEL="decorated")
    assert out["traced"] > 0
    assert _summary(proc).startswith("cas run: precompiled start: 0 unit(s) loaded")
    assert "precompiled unit not used (Source code changes detected for pdecorated" in proc.stderr


WRAPPED_GUARD_VALUE = '''
import io, pickle, sys
sys.path.insert(0, sys.argv[1])
import torch._dynamo.guards as guards
import pdecorated
from cas.torch import _compat
inner = pdecorated.Block.forward.__wrapped__  # the original, one decorator down


def round_trip():
    buf = io.BytesIO()
    guards.GuardsStatePickler({}, {}, {}, buf).dump(inner)
    back = pickle.loads(buf.getvalue())
    return "SAME" if back is inner else repr(back)


print("torch", round_trip())  # torch's own pickler first, then with cas's fix installed
_compat.guard_units()
print("cas", round_trip())
'''


def test_a_decorated_function_in_a_guard_is_pickled_as_the_same_function(tmp_path: Path) -> None:
    # The GPT-2 `_Missing`: its guards reach decorated functions through their wrappers'
    # closures; torch's pickler finds the wrapper under the original's name and writes
    # `_Missing("fqn mismatch")`, which no process can install. cas writes the name and
    # the `__wrapped__` steps, read back as the loading process's own function. One
    # process shows both (one import of torch): torch's pickler, then cas's.
    program = _program(tmp_path / "program")
    proc = subprocess.run([sys.executable, "-c", WRAPPED_GUARD_VALUE, str(program.parent)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.splitlines() == ["torch _Missing(fqn mismatch)", "cas SAME"]
