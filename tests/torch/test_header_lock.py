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
