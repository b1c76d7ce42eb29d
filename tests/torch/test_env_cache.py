"""The env of this machine without importing torch: computed once per torch install."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

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
