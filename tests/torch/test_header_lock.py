"""hydrate's hold on torch's lock for a precompiled header, seen through filelock, the
lock torch itself takes before building a header (no torch needed)."""

from __future__ import annotations

from pathlib import Path

import pytest
from filelock import FileLock, Timeout

from cas.torch.hydrate import _torch_header_lock


def test_torch_waits_for_a_header_hydrate_is_writing_and_gets_it_after(tmp_path: Path) -> None:
    header = tmp_path / "precompiled_headers" / "cabc123.h.gch"
    header.parent.mkdir()
    ours = _torch_header_lock(header)
    assert ours is not None
    torch_lock = FileLock(str(header.parent / "locks" / "cabc123.lock"), timeout=0)
    with pytest.raises(Timeout):
        torch_lock.acquire()
    assert _torch_header_lock(header) is None  # a second writer leaves it to the first
    ours.release()
    with torch_lock:  # released: torch takes it at once
        assert _torch_header_lock(header) is None  # and while torch builds, hydrate stays out
    again = _torch_header_lock(header)
    assert again is not None
    again.release()


def test_cas_run_writes_a_header_only_for_a_program_that_reaches_the_compiler(tmp_path: Path) -> None:
    """A header is ~150 MB: `cas run` of a program that never imports dynamo or inductor
    must not spend a second writing it; one that does gets it, written by cas (torch, had
    it built one, would have taken the lock first and cas would have left it alone)."""
    import os
    import subprocess
    import sys

    from cas.store import Store
    from cas.torch.capture import Artifact, commit_artifacts

    header = os.urandom(1 << 20) * 9  # over hydrate's streaming size: written by the thread
    name = "cdeferredtest0123456789.h.gch"
    store = tmp_path / "store"
    with Store.init(store) as s:
        commit_artifacts(s, [Artifact("cpp_pch", name, header)], branch="main", message="a header")

    def run(program: str, machine: Path) -> Path:
        (machine / "tmp").mkdir(parents=True)
        env = {k: v for k, v in os.environ.items() if k not in ("CAS_DIR", "TORCHINDUCTOR_CACHE_DIR")}
        env.update(TMPDIR=str(machine / "tmp"), TORCHINDUCTOR_CACHE_DIR=str(machine / "cache"))
        cas = [sys.executable, "-c", "from cas_cli.main import main; main()"]
        proc = subprocess.run([*cas, "--store", str(store), "run", "--ref", "main", "--", sys.executable, "-c",
                               program], env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        found = list((machine / "tmp").rglob(name))
        return found[0] if found else machine / "absent"

    # A program that imports torch and never compiles: cas's writer thread has not started
    # when torch is in (alive, it would be writing; done, the header would be there), and
    # nothing is left once the program ends.
    idle = ("import torch, threading\n"
            "assert not [t for t in threading.enumerate() if t.name == 'cas-hydrate'], 'writer started'\n")
    assert not run(idle, tmp_path / "a").exists()
    # The program waits (as torch would, on the lock) for the header cas writes meanwhile.
    waits = ("import torch, torch._dynamo\n"
             "from filelock import FileLock\n"
             "import os, tempfile\n"
             "d = os.path.join(tempfile.gettempdir(), 'torchinductor_' + __import__('getpass').getuser(),"
             " 'precompiled_headers')\n"
             f"with FileLock(os.path.join(d, 'locks', '{name.split('.')[0]}.lock'), timeout=120):\n"
             f"    assert os.path.exists(os.path.join(d, '{name}'))\n")
    written = run(waits, tmp_path / "b")
    assert written.exists() and written.read_bytes() == header
