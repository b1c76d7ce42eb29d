"""``cas autotune`` as a user meets it: empty stores, bad refs, bad dirs (no compile)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def test_autotune_commands_on_a_store_without_commits_say_so(cas: Any) -> None:
    cas("init")
    for args in (("autotune", "show"), ("autotune", "log")):
        proc = cas(*args, ok=False)
        assert proc.stderr.startswith("cas: error: ") and "Traceback" not in proc.stderr


def test_unknown_revisions_and_missing_dirs_are_one_line_errors(cas: Any, tmp_path: Path) -> None:
    cas("init")
    for args in (("autotune", "diff", "main", "nope"), ("autotune", "show", "nope"),
                 ("autotune", "record", "--cache-dir", str(tmp_path / "missing"))):
        proc = cas(*args, ok=False)
        assert "Traceback" not in proc.stderr and proc.stderr.startswith("cas: error: ")


def test_records_of_a_cache_dir_with_none_commit_nothing(cas: Any, tmp_path: Path) -> None:
    cas("init")
    (tmp_path / "empty").mkdir()
    out = json.loads(cas("--json", "autotune", "record", "--cache-dir", str(tmp_path / "empty")).stdout)
    assert out["commit"] is None and out["added"] == 0
