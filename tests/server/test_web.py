"""The web view in a real headless browser (Debian's chromium, driven by Playwright):
login with a token, every page and every link answers 200 with no console errors, a
commit page shows its diff, the explain box answers; screenshots of the main pages are
saved under build/artifacts/web/ (gitignored; CI can keep them)."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from servers import CasServer

from cas import provenance
from cas.history import commit_changes
from cas.objects import Entry, EntryKey
from cas.refs import create_tag
from cas.server.auth import Scope, add_token
from cas.store import Store
from server.doorkit import ENV_A, FX_KEY, seed

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(os.environ.get("CAS_TEST_ARTIFACTS", REPO / "build" / "artifacts")) / "web"
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]


def _chromium() -> str:
    if not Path(CHROMIUM).exists() and os.geteuid() == 0 and shutil.which("apt-get"):
        subprocess.run(["bash", str(REPO / "tests" / "setup_system.sh")], check=False, timeout=900)
    if not Path(CHROMIUM).exists():
        # `make test` installs it (tests/setup_system.sh): a missing browser is a broken
        # set-up, never a pass.
        pytest.fail("no browser: Debian's chromium is not installed (run tests/setup_system.sh as root)")
    return CHROMIUM


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, int]]:
    work = tmp_path_factory.mktemp("web")
    path = work / "store"
    with Store.init(path) as s:
        read = add_token("viewer", Scope.READ, store=s)
    seed(path)
    with Store(path) as s:
        data = b"aot entry bytes"
        change = {EntryKey(ENV_A.id, "aot_autograd", "akey", ""): Entry(s.put(data), len(data), None,
                                                                       {"time_taken_ms": 1500})}
        oid = commit_changes(s, "main", change, "second: an AOT entry")
        provenance.mark_local(s, oid)
        create_tag(s, "release/1.0", oid, message="first release")
    server = CasServer(path, work, "--redis-port", "0", "--redis-env", ENV_A.id.hex)
    port = server.redis_port
    try:
        c = redis.Redis(port=port, password=read)
        c.get(FX_KEY), c.get("pt2:fx-graph-v1::nope:c1")  # hit rates to show
        yield server.url, read, port
    finally:
        server.stop()


def test_a_wrong_token_is_refused(site: tuple[str, str, int]) -> None:
    url, _, _ = site
    got = httpx.post(url + "/ui/login", data={"token": "cas_wrong"})
    assert got.status_code == 401 and "unknown token" in got.text
    assert httpx.get(url + "/ui/", follow_redirects=False).status_code == 303


def test_a_login_form_is_read_only_up_to_its_limit(site: tuple[str, str, int]) -> None:
    url, _, _ = site
    got = httpx.post(url + "/ui/login", content=b"token=" + b"x" * (1 << 20),
                     headers={"content-type": "application/x-www-form-urlencoded"})
    assert got.status_code == 413, got.text


def test_every_page_in_chromium(site: tuple[str, str, int]) -> None:
    from playwright.sync_api import sync_playwright

    url, token, _ = site
    exe = _chromium()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    problems: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, args=ARGS, headless=True)
        page = browser.new_page()
        page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
        page.on("pageerror", lambda e: problems.append(f"page error: {e}"))

        def visit(path: str) -> Any:
            response = page.goto(url + path)
            assert response is not None and response.status == 200, (path, response and response.status)
            return response

        visit("/ui/entries/main")  # not logged in: the login form, then back here
        assert page.url.startswith(url + "/ui/login")
        page.screenshot(path=str(ARTIFACTS / "login.png"), full_page=True)
        page.fill("#token", token)
        with page.expect_navigation() as nav:
            page.click("button[type=submit]")
        assert nav.value is not None and nav.value.status == 200
        assert page.url == url + "/ui/entries/main"
        text = page.inner_text("main")
        assert "aot_autograd" in text and "1.5 s" in text and ENV_A.id.short() in text

        visit("/ui/")
        text = page.inner_text("main")
        assert "release/1.0" in text and "main" in text
        assert "inductor" in page.inner_text("table.rates")  # the Redis door's hit and miss
        page.screenshot(path=str(ARTIFACTS / "refs.png"), full_page=True)

        # Follow the links: the log of main, then its newest commit.
        with page.expect_navigation() as nav:
            page.click("table.refs >> text=log >> nth=0")
        assert nav.value is not None and nav.value.status == 200
        assert "second: an AOT entry" in page.inner_text("table.log")
        page.screenshot(path=str(ARTIFACTS / "log.png"), full_page=True)
        with page.expect_navigation() as nav:
            page.click("table.log a >> nth=0")
        assert nav.value is not None and nav.value.status == 200
        diff = page.inner_text("table.diff")
        assert "aot_autograd" in diff and "1" in diff
        assert "akey" in page.inner_text("ul.keys")
        page.screenshot(path=str(ARTIFACTS / "commit.png"), full_page=True)

        visit("/ui/explain")
        page.fill("#key", "fgraphkey")
        with page.expect_navigation() as nav:
            page.click("button[type=submit]")
        assert nav.value is not None and nav.value.status == 200
        assert "applies here" in page.inner_text("pre.answer")
        page.screenshot(path=str(ARTIFACTS / "explain.png"), full_page=True)

        # Every link on every page reachable from the index answers 200.
        seen: set[str] = set()
        todo = ["/ui/"]
        while todo:
            path = todo.pop()
            if path in seen or path.startswith("/ui/logout"):
                continue
            seen.add(path)
            visit(path)
            hrefs = page.eval_on_selector_all("a[href^='/ui']", "els => els.map(e => e.getAttribute('href'))")
            todo.extend(h for h in hrefs if h not in seen)
        assert len(seen) >= 8

        visit("/ui/logout")
        assert page.url.startswith(url + "/ui/login")
        browser.close()
    assert problems == []


def test_revoked_entries_are_marked_on_the_entries_and_commit_pages(tmp_path: Path) -> None:
    from cas import revocations
    from cas.refs import resolve

    path = tmp_path / "store"
    Store.init(path).close()
    seed(path)  # main: the FX key for env A and env B
    with Store(path) as s:
        revocations.revoke(s, revocations.find_targets(s, "fgraphkey"), "miscompiled")
        tip = resolve(s, "main").hex
    server = CasServer(path, tmp_path, "--no-auth")
    try:
        entries = httpx.get(f"{server.url}/ui/entries/main")
        assert entries.status_code == 200
        assert entries.text.count('<td class="n">1</td><td class="n">1</td>') == 2  # one of one, per env
        commit = httpx.get(f"{server.url}/ui/commit/{tip}")
        assert commit.status_code == 200 and "added, revoked" in commit.text
    finally:
        server.stop()
