"""The flat Store surface stays gone: tools/store_codemod.py --check finds no old call."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_codemod(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    tool = ROOT / "tools" / "store_codemod.py"
    return subprocess.run([sys.executable, str(tool), *args], cwd=cwd, capture_output=True, text=True)


def test_no_old_store_call_remains() -> None:
    done = run_codemod("--check")
    assert done.returncode == 0, done.stdout + done.stderr


def test_rewrites_old_calls_once(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text(
        "def f(store, d):\n"
        "    store.put(b'x')  # kept comment\n"
        "    tip = store.get_ref('refs/heads/main')\n"
        "    d.get('k')\n"
        "    with Store.init(p) as s:\n"
        "        s.set_meta('k', None)\n"
        "    return store.list_refs(), tip\n"
    )
    assert run_codemod("--check", str(sample)).returncode == 1
    assert run_codemod(str(sample)).returncode == 0
    once = sample.read_text()
    assert run_codemod(str(sample)).returncode == 0
    assert sample.read_text() == once
    assert once == (
        "def f(store, d):\n"
        "    store.objects.put(b'x')  # kept comment\n"
        "    tip = store.refs.get('refs/heads/main')\n"
        "    d.get('k')\n"
        "    with Store.init(p) as s:\n"
        "        s.meta.set('k', None)\n"
        "    return store.refs.as_dict(), tip\n"
    )
    assert run_codemod("--check", str(sample)).returncode == 0
