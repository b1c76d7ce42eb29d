"""The env of this machine without importing torch: computed once per torch install."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

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


def test_the_env_is_the_same_with_and_without_importing_torch(tmp_path: Path) -> None:
    cache = tmp_path / "env-cache"
    first = _probe(cache, "bare")  # nothing cached yet: torch is imported to fill the cache
    assert first["torch_imported"] is True
    assert sorted(p.name.split("-")[0] for p in cache.iterdir()) == ["env", "torch"]
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


def test_cas_capture_reads_a_cache_dir_without_importing_torch(tmp_path: Path) -> None:
    env_cache = tmp_path / "env-cache"
    _probe(env_cache, "bare")  # the first process on this machine fills the env cache
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
