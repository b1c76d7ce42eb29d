"""Push, fetch, pull and clone between real stores over the path remote."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from cas import refs, sync
from cas.errors import NonFastForward, RefConflict, TagExists
from cas.remote.faults import CountingRemote
from cas.remote.local import LocalRemote
from cas.store import Store

from .helpers import ENV_A, add, assert_complete, entries_of, new_store, remote_at

MAIN = [("refs/heads/main", "refs/heads/main")]


@pytest.fixture
def remote(tmp_path: Path) -> LocalRemote:
    r = remote_at(tmp_path / "remote")
    yield r
    r.close()


@pytest.fixture
def a(tmp_path: Path) -> Store:
    s = new_store(tmp_path / "a")
    yield s
    s.close()


@pytest.fixture
def b(tmp_path: Path) -> Store:
    s = new_store(tmp_path / "b")
    yield s
    s.close()


def test_push_then_clone_gives_the_same_commits_and_entries(a: Store, b: Store, remote: LocalRemote) -> None:
    add(a, "one", 5)
    tip = add(a, "two", 5)
    refs.create_tag(a, "v1", tip, message="release")
    res = sync.push(a, remote, [*MAIN, ("refs/tags/v1", "refs/tags/v1")], remote_name="origin")
    assert [u.status for u in res.updates] == ["new", "new"]
    assert res.stats.objects > 10 and res.stats.bytes > 0
    assert a.refs.get("refs/remotes/origin/main") == tip
    assert_complete(remote.store)

    sync.clone(b, remote, url=remote.url)
    assert b.refs.get("refs/heads/main") == tip
    assert b.refs.get("refs/remotes/origin/main") == tip
    assert b.refs.get("refs/tags/v1") == a.refs.get("refs/tags/v1")
    assert entries_of(b, "main") == entries_of(a, "main")
    assert [c.message for _, c in __import__("cas.history").history.log(b, tip)] == ["add two", "add one"]
    assert_complete(b)


def test_nothing_new_costs_at_most_two_requests(a: Store, b: Store, remote: LocalRemote) -> None:
    add(a, "x", 4)
    sync.push(a, remote, MAIN, remote_name="origin")
    sync.clone(b, remote)
    counting = CountingRemote(remote)
    res = sync.push(a, counting, MAIN, remote_name="origin")
    assert res.updates[0].status == "up-to-date" and res.stats.objects == 0
    assert counting.requests <= 2
    counting = CountingRemote(remote)
    _, done = sync.pull(b, counting, branch="main", remote_name="origin")
    assert done.kind == "up-to-date"
    assert counting.requests <= 2 and counting.fetched_objects == 0


def test_non_fast_forward_push_is_refused_without_force(a: Store, b: Store, remote: LocalRemote) -> None:
    add(a, "base")
    sync.push(a, remote, MAIN, remote_name="origin")
    sync.clone(b, remote)
    theirs = add(b, "theirs")
    sync.push(b, remote, MAIN, remote_name="origin")
    mine = add(a, "mine")
    with pytest.raises(NonFastForward, match="remote has commits you do not have") as err:
        sync.push(a, remote, MAIN, remote_name="origin")
    assert "pull first" in (err.value.hint or "")
    assert remote.list_refs()["refs/heads/main"] == theirs
    res = sync.push(a, remote, MAIN, remote_name="origin", force=True)
    assert res.updates[0].status == "forced"
    assert remote.list_refs()["refs/heads/main"] == mine


def test_rewinding_a_known_remote_branch_needs_force(a: Store, remote: LocalRemote) -> None:
    first = add(a, "first")
    add(a, "second")
    sync.push(a, remote, MAIN)
    refs.set_branch(a, "main", first)
    with pytest.raises(NonFastForward, match="discard commits"):
        sync.push(a, remote, MAIN)


def test_tags_never_move_without_force(a: Store, b: Store, remote: LocalRemote) -> None:
    one = add(a, "one")
    refs.create_tag(a, "v1", one)
    sync.push(a, remote, [("refs/tags/v1", "refs/tags/v1"), *MAIN])
    sync.clone(b, remote)
    two = add(a, "two")
    refs.create_tag(a, "v1", two, force=True)
    with pytest.raises(TagExists, match="tags never move|already exists"):
        sync.push(a, remote, [("refs/tags/v1", "refs/tags/v1")])
    assert remote.list_refs()["refs/tags/v1"] == one
    sync.push(a, remote, [("refs/tags/v1", "refs/tags/v1")], force=True)
    assert remote.list_refs()["refs/tags/v1"] == two
    # A fetch does not move b's existing tag either, and says so.
    res = sync.fetch(b, remote, remote_name="origin")
    rejected = [u for u in res.updates if u.status == "rejected"]
    assert [u.ref for u in rejected] == ["refs/tags/v1"]
    assert b.refs.get("refs/tags/v1") == one
    sync.fetch(b, remote, remote_name="origin", force=True)
    assert b.refs.get("refs/tags/v1") == two


def test_concurrent_pushers_one_lands_the_other_is_told_to_pull(tmp_path: Path, remote: LocalRemote) -> None:
    base = new_store(tmp_path / "base")
    add(base, "base")
    sync.push(base, remote, MAIN)
    stores = []
    for name in ("p1", "p2"):
        s = new_store(tmp_path / name)
        sync.clone(s, remote)
        add(s, name, 3)
        stores.append(s)
    gate = threading.Barrier(2)

    class Racing(CountingRemote):
        def update_ref(self, name, new, expected):  # type: ignore[no-untyped-def]
            gate.wait(timeout=10)  # both have sent their objects and listed the same tip
            super().update_ref(name, new, expected)

    outcomes: dict[int, object] = {}

    def run(i: int) -> None:
        r = LocalRemote(remote.url)
        try:
            outcomes[i] = sync.push(stores[i], Racing(r), MAIN, remote_name="origin")
        except RefConflict as exc:
            outcomes[i] = exc
        finally:
            r.close()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    errors = [o for o in outcomes.values() if isinstance(o, RefConflict)]
    assert len(errors) == 1, outcomes
    assert "someone else pushed" in str(errors[0]) and "pull first" in (errors[0].hint or "")
    loser = stores[0] if isinstance(outcomes[0], RefConflict) else stores[1]
    winner = stores[1] if loser is stores[0] else stores[0]
    assert remote.list_refs()["refs/heads/main"] == winner.refs.get("refs/heads/main")
    # Nothing is lost: the loser pulls (a merge), pushes, and the remote has both.
    _, done = sync.pull(loser, remote, branch="main", remote_name="origin")
    assert done.kind == "merge"
    sync.push(loser, remote, MAIN, remote_name="origin")
    with Store(remote.url) as r:
        merged = entries_of(r, "main")
    assert {str(k).split("/")[-1] for k in merged} >= {"p1-0", "p2-0", "base-0"}
    for s in (base, *stores):
        s.close()


def test_pull_fast_forwards(a: Store, b: Store, remote: LocalRemote) -> None:
    add(a, "one")
    sync.push(a, remote, MAIN, remote_name="origin")
    sync.clone(b, remote)
    tip = add(a, "two")
    sync.push(a, remote, MAIN, remote_name="origin")
    res, done = sync.pull(b, remote, branch="main", remote_name="origin")
    assert done.kind == "fast-forward" and done.new == tip
    assert b.refs.get("refs/heads/main") == tip
    assert entries_of(b, "main") == entries_of(a, "main")
    assert_complete(b)


def test_pull_merges_with_per_kind_rules_and_reports(a: Store, b: Store, remote: LocalRemote) -> None:
    add(a, "shared", kind="autotune_record", meta={"time_ms": 5.0})
    sync.push(a, remote, MAIN, remote_name="origin")
    sync.clone(b, remote)
    # Both sides re-tune the same kernel; a's result is faster.
    add(a, "shared", 1, kind="autotune_record", meta={"time_ms": 1.0}, size=65)
    add(a, "only-a")
    sync.push(a, remote, MAIN, remote_name="origin")
    add(b, "shared", 1, kind="autotune_record", meta={"time_ms": 3.0}, size=66)
    add(b, "only-b")
    _, done = sync.pull(b, remote, branch="main", remote_name="origin")
    assert done.kind == "merge"
    assert [(str(k).split("/")[-1], rule) for k, _, rule in done.resolved] == [("shared-0", "faster")]
    merged = entries_of(b, "main")
    names = {str(k).split("/")[-1]: e for k, e in merged.items()}
    assert {"only-a-0", "only-b-0", "shared-0", "shared-1"} <= set(names)
    assert names["shared-0"].meta["time_ms"] == 1.0
    head = refs.load_commit(b, b.refs.get("refs/heads/main"))
    assert len(head.parents) == 2 and head.metadata["resolved"] == [[str(done.resolved[0][0]), "faster"]]
    assert_complete(b)


def test_fetch_prunes_deleted_remote_branches(a: Store, b: Store, remote: LocalRemote) -> None:
    tip = add(a, "one")
    refs.set_branch(a, "feature", tip)
    sync.push(a, remote, [*MAIN, ("refs/heads/feature", "refs/heads/feature")])
    sync.clone(b, remote)
    assert b.refs.get("refs/remotes/origin/feature") == tip
    remote.update_ref("refs/heads/feature", None, tip)
    res = sync.fetch(b, remote, remote_name="origin")
    assert b.refs.get("refs/remotes/origin/feature") is None
    assert [u.status for u in res.updates] == ["deleted"]
    assert ENV_A.id in {k.env for k in entries_of(b, "main")}


def test_progress_reports_reach_the_totals(a: Store, b: Store, remote: LocalRemote) -> None:
    add(a, "p", 30, size=5000, random_bytes=True)
    sent: list[tuple] = []
    res = sync.push(a, remote, MAIN, progress=lambda *e: sent.append(e))
    phase, objects, done, total_objects, total = sent[-1]
    assert phase == "send" and objects == total_objects == res.stats.objects
    assert done == res.stats.bytes >= total == 30 * 5000  # totals count blob bytes
    got: list[tuple] = []
    sync.pull(b, remote, branch="main", progress=lambda *e: got.append(e))
    phase, objects, done, total_objects, total = got[-1]
    assert phase == "fetch" and objects == total_objects == 31  # 30 blobs + the env
    assert done >= total == 30 * 5000  # env sizes are not known before they arrive


def test_cli_progress_bar_waits_a_second_then_draws(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import io

    from rich.console import Console

    from cas_cli import cmd_remote
    from cas_cli.main import Context

    ctx = Context(tmp_path, as_json=False, quiet=False)
    ctx.err = Console(file=io.StringIO(), force_terminal=True)
    quick = cmd_remote.Feedback(ctx)
    quick("send", 1, 10, 2, 20)
    assert quick.bars is None  # under a second: no bar, only the summary later
    monkeypatch.setattr(cmd_remote, "BAR_DELAY", 0.0)
    slow = cmd_remote.Feedback(ctx)
    slow("send", 1, 10, 2, 20)
    assert slow.bars is not None and slow.bars.tasks[0].completed == 10
    slow.close()
    ctx.quiet = True
    silent = cmd_remote.Feedback(ctx)
    silent("send", 1, 10, 2, 20)
    assert silent.bars is None


def test_cli_progress_bar_only_on_a_terminal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """stderr a pipe or a file (a machine of a fleet, a CI log): rich would show nothing
    of a transient bar there, so none is made, and no console either; FORCE_COLOR makes
    rich take it for a terminal, and then the bar is drawn."""
    import io

    from cas_cli import cmd_remote
    from cas_cli.main import Context

    monkeypatch.setattr(cmd_remote, "BAR_DELAY", 0.0)
    monkeypatch.setattr("sys.stderr", io.StringIO())
    for var in ("FORCE_COLOR", "TTY_COMPATIBLE"):
        monkeypatch.delenv(var, raising=False)
    ctx = Context(tmp_path, as_json=False, quiet=False)
    piped = cmd_remote.Feedback(ctx)
    piped("fetch", 1, 10, 2, 20)
    assert piped.bars is None and "err" not in ctx.__dict__  # rich's console never made
    monkeypatch.setenv("FORCE_COLOR", "1")
    forced = cmd_remote.Feedback(Context(tmp_path, as_json=False, quiet=False))
    forced("fetch", 1, 10, 2, 20)
    assert forced.bars is not None
    forced.close()
