"""The env of this machine without importing torch: computed once per torch install."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from cas.refs import load_commit, resolve
from cas.store import Store
from cas.torch.autotune import records_in

DATA = Path(__file__).parent.parent / "data" / "autotune"

PROBE = (
    "import json, sys\n"
    "if sys.argv[1] == 'torch':\n"
    "    import torch\n"
    "from cas.torch.env import current_env\n"
    "env = current_env()\n"
    "print(json.dumps({'env': env.id.hex, 'torch_imported': 'torch' in sys.modules,\n"
    "                  'torch_key': env.fields['torch_key']}))\n"
)


def _probe(cache: Path, mode: str) -> dict[str, object]:
    env = dict(os.environ, CAS_TORCH_ENV_CACHE=str(cache))
    proc = subprocess.run([sys.executable, "-c", PROBE, mode], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out: dict[str, object] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


@dataclass
class Filled:
    """An env cache after the first process of a machine: what it printed and left there."""

    cache: Path
    first: dict[str, object]
    files: list[str]


@pytest.fixture(scope="module")
def filled(tmp_path_factory: pytest.TempPathFactory) -> Filled:
    """The first process on a new machine (an empty env cache) fills it: once for this
    module, whose tests then read it (it pays an import of torch, ~4 CPU-s)."""
    cache = tmp_path_factory.mktemp("env") / "env-cache"
    first = _probe(cache, "bare")  # nothing cached yet: torch is imported to fill the cache
    return Filled(cache, first, sorted(p.name.split("-")[0] for p in cache.iterdir()))


def test_the_env_is_the_same_with_and_without_importing_torch(filled: Filled) -> None:
    cache, first = filled.cache, filled.first
    assert first["torch_imported"] is True
    assert filled.files == ["env", "torch"]
    second = _probe(cache, "bare")  # a `cas hydrate`-like process: no torch import at all
    assert second["torch_imported"] is False and second["env"] == first["env"]
    third = _probe(cache, "torch")  # a compiling process: torch's own fields, cached torch_key
    assert third["env"] == first["env"]


CAPTURE = (
    "import sys\n"
    "if sys.argv[1] == 'torch':\n"
    "    import torch\n"
    "from cas_cli.main import main\n"
    "sys.argv = ['cas', *sys.argv[2:]]\n"
    "try:\n"
    "    main()\n"
    "finally:\n"
    "    print('TORCH-IMPORTED', 'torch' in sys.modules)\n"
)


def _records(env_cache: Path, store: Path, mode: str, *command: str) -> tuple[bool, dict[str, str]]:
    """Run the command line ``command`` on a new store (``mode`` 'torch': torch imported
    first, as a compiling process has it): whether torch was imported, and the autotune
    records committed (key -> blob)."""
    Store.init(store).close()
    env = dict(os.environ, CAS_TORCH_ENV_CACHE=str(env_cache))
    proc = subprocess.run([sys.executable, "-c", CAPTURE, mode, "--store", str(store), *command],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with Store(store) as s:
        records = records_in(s, load_commit(s, resolve(s, "main")).manifest)
        return proc.stdout.split()[-1] == "True", {k.key: e.blob.hex for k, e in records.items()}


def test_cas_capture_reads_a_cache_dir_without_importing_torch(filled: Filled, tmp_path: Path) -> None:
    env_cache = filled.cache  # the first process on this machine filled it
    cache_dir = tmp_path / "torch-cache"
    (cache_dir / "cache").mkdir(parents=True)
    shutil.copy(DATA / "cpu-timing-file.json", cache_dir / "cache" / "44136fa355b3678a")
    capture = ("capture", "--cache-dir", str(cache_dir), "-m", "tuned")
    imported, bare = _records(env_cache, tmp_path / "bare", "bare", *capture)
    assert imported is False and len(bare) == 3  # three GEMM shapes timed in that file
    imported, with_torch = _records(env_cache, tmp_path / "torch", "torch", *capture)
    assert imported is True
    assert with_torch == bare  # the same device class, provenance and records either way
    record = ("autotune", "record", "--cache-dir", str(cache_dir))
    assert _records(env_cache, tmp_path / "record", "bare", *record) == (False, bare)
