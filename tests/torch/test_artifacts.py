"""``cas.torch.artifacts``: one entry key per torch artifact, one commit-metadata schema,
whichever front door records it (capture, import, the live backend)."""

from __future__ import annotations

from cas.digest import ObjectId
from cas.objects import EntryKey
from cas.refs import load_commit
from cas.store import Store
from cas.torch.artifacts import commit_metadata, entry_key
from cas.torch.capture import Artifact, commit_artifacts
from cas.torch.env import current_env
from cas.torch.live import LiveCache
from cas.torch.wire import parse_backend_key

ENV = ObjectId.of(b"env")


def test_a_pgo_key_is_stored_as_torch_names_its_file_whichever_door_saw_it() -> None:
    raw = 'code_state_/home/u/x.py:12:f<locals>'
    captured, _ = entry_key(ENV, "pgo", raw, b"", "cpu0")
    parsed = parse_backend_key(f"pt2:dynamo-pgo::{raw}:c1")
    assert parsed is not None
    live, _ = entry_key(ENV, parsed[0], parsed[1], b"", "")
    assert captured == live == EntryKey(ENV, "pgo", "code_state__home_u_x.py_12_f_locals_", "")


def test_cpu_bound_kinds_are_told_apart_by_cpu() -> None:
    ek, guards = entry_key(ENV, "cpp_kernel", "ab/cdef.so", b"\x7fELF", "f00")
    assert ek.variant == "cpu-f00" and guards is None


def test_commit_metadata_has_the_core_fields_then_the_producers_own() -> None:
    keys = [EntryKey(ENV, "inductor", "f1", ""), EntryKey(ENV, "inductor", "f2", ""),
            EntryKey(ENV, "aot_autograd", "a1", "")]
    meta = commit_metadata("capture", ENV, keys, {"cache_dir": "/c", "producer": "import-megacache"})
    assert meta["kinds"] == {"inductor": 2, "aot_autograd": 1}
    assert meta["env"] == ENV.hex and meta["host"] and isinstance(meta["time"], int)
    assert meta["producer"] == "import-megacache" and meta["cache_dir"] == "/c"


def test_capture_and_live_commits_name_their_counts_alike(store: Store) -> None:
    env = current_env()
    cap = commit_artifacts(store, [Artifact("gemm_timing", "abc", b"{}")], message="m", env=env)
    live = LiveCache(store, env, root=None, branch="live")
    live.put("triton:abc123:k.json", b"{}")
    flushed = live.flush()
    assert cap.commit is not None and flushed is not None
    metas = [load_commit(store, c).metadata for c in (cap.commit, flushed)]
    assert [m["producer"] for m in metas] == ["capture", "live"]
    assert [m["kinds"] for m in metas] == [{"gemm_timing": 1}, {"triton_remote": 1}]
    assert all(m["env"] == cap.env.hex and "counts" not in m for m in metas)
