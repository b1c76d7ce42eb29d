"""The web view in a real headless browser (Debian's chromium, driven by Playwright):
login with a token, every page and every link answers 200 with no console errors (a
script or style the Content-Security-Policy blocks is one), a commit page shows its diff,
the explain box answers, the log-out button logs out; screenshots of the main pages are
saved under build/artifacts/web/ (gitignored; CI can keep them). Over plain HTTP: a
cross-site login or logout (no or a wrong CSRF token, another Origin) changes nothing, a
GET of /ui/logout does not log out, and every response carries the security headers."""

from __future__ import annotations

import contextlib
import os
import re
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
from server.rediskit import ENV_A, FX_KEY, seed

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
        change = {EntryKey(ENV_A.id, "aot_autograd", "akey", ""): Entry(s.objects.put(data), len(data), None,
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


def csrf_of(page: httpx.Response) -> str:
    """The CSRF token a page's forms carry."""
    found = re.search(r'name="csrf" value="([0-9a-f]+)"', page.text)
    assert found is not None, page.text
    return found.group(1)


@contextlib.contextmanager
def logged_in(url: str, token: str) -> Iterator[httpx.Client]:
    """A client that logged in as a browser does: the login page, then its form."""
    with httpx.Client(base_url=url) as client:
        form = client.get("/ui/login")
        got = client.post("/ui/login", data={"token": token, "csrf": csrf_of(form)})
        assert got.status_code == 303 and "cas_token" in got.headers["set-cookie"], got.text
        yield client


def test_a_wrong_token_is_refused(site: tuple[str, str, int]) -> None:
    url, _, _ = site
    with httpx.Client(base_url=url) as client:
        got = client.post("/ui/login", data={"token": "cas_wrong", "csrf": csrf_of(client.get("/ui/login"))})
        assert got.status_code == 401 and "unknown token" in got.text
        assert client.get("/ui/", follow_redirects=False).status_code == 303


def test_a_cross_site_login_sets_no_cookie(site: tuple[str, str, int]) -> None:
    url, token, _ = site
    with httpx.Client(base_url=url) as client:
        good = csrf_of(client.get("/ui/login"))  # this client holds the nonce cookie now
        forged = [
            ({"token": token}, {}),  # no CSRF token: any other site's form
            ({"token": token, "csrf": "0" * 64}, {}),  # a made-up one
            ({"token": token, "csrf": good}, {"origin": "https://evil.example"}),  # the right one, elsewhere
        ]
        for data, headers in forged:
            got = client.post("/ui/login", data=data, headers=headers)
            assert got.status_code == 403 and "cas_token" not in got.headers.get("set-cookie", ""), got.text
        # without the cookie (a cross-site POST: SameSite=Strict keeps it back) the right token fails too
        bare = httpx.post(url + "/ui/login", data={"token": token, "csrf": good})
        assert bare.status_code == 403 and "cas_token" not in bare.headers.get("set-cookie", "")
        assert client.get("/ui/", follow_redirects=False).status_code == 303  # still logged out
        got = client.post("/ui/login", data={"token": token, "csrf": good}, headers={"origin": url})
        assert got.status_code == 303 and "samesite=strict" in got.headers["set-cookie"].lower()


def test_logout_is_a_post_with_the_pages_csrf_token(site: tuple[str, str, int]) -> None:
    url, token, _ = site
    with logged_in(url, token) as client:
        page = client.get("/ui/")
        assert page.status_code == 200
        assert client.get("/ui/logout", follow_redirects=False).status_code == 405  # a link cannot log out
        assert client.post("/ui/logout", data={"csrf": "0" * 64}).status_code == 403
        assert client.get("/ui/", follow_redirects=False).status_code == 200  # still logged in
        got = client.post("/ui/logout", data={"csrf": csrf_of(page)})
        assert got.status_code == 303 and got.headers["location"] == "/ui/login"
        assert client.get("/ui/", follow_redirects=False).status_code == 303


def test_every_response_carries_the_security_headers(site: tuple[str, str, int]) -> None:
    url, token, _ = site
    with logged_in(url, token) as client:
        for path in ("/ui/login", "/ui/", "/ui/log/main", "/ui/static/style.css", "/ui/nope", "/v1/health"):
            got = client.get(path, follow_redirects=False)
            headers = got.headers
            assert headers["x-frame-options"] == "DENY" and headers["x-content-type-options"] == "nosniff", path
            assert headers["referrer-policy"] == "same-origin", path
            csp = headers["content-security-policy"]
            assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp


def test_a_login_form_is_read_only_up_to_its_limit(site: tuple[str, str, int]) -> None:
    url, _, _ = site
    got = httpx.post(url + "/ui/login", content=b"token=" + b"x" * (1 << 20),
                     headers={"content-type": "application/x-www-form-urlencoded"})
    assert got.status_code == 413, got.text


def test_the_coverage_page_of_a_tag(site: tuple[str, str, int]) -> None:
    """The refs page links each ref to its coverage; the page names the tag's env, its
    kinds, its graphs and says no machine reported misses yet."""
    url, token, _ = site
    with logged_in(url, token) as web:
        assert 'href="/ui/coverage/release/1.0"' in web.get("/ui/").text
        got = web.get("/ui/coverage/release/1.0")
        assert got.status_code == 200, got.text
        for words in (ENV_A.id.short(), "aot_autograd", "fgraphkey", "akey", "no miss reports for this pin"):
            assert words in got.text, words
        # The Redis door reads main, which is at this tag: its hit and miss since start.
        assert "Redis door since the server started" in got.text
        assert "<tr><td>inductor</td><td class=\"n\">1</td><td class=\"n\">1</td></tr>" in got.text
        assert web.get("/ui/coverage/release/9.9").status_code == 404


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
            page.click("form.login button")
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
            page.click("form.explain button")
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

        with page.expect_navigation() as nav:
            page.click("form.logout button")
        assert nav.value is not None and nav.value.status == 200
        assert page.url.startswith(url + "/ui/login")
        visit("/ui/entries/main")  # logged out: the login form again
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
        # The explain box shows the key's history (cas blame): its revocation and its add.
        explain = httpx.get(f"{server.url}/ui/explain", params={"key": "fgraphkey", "ref": "main"})
        assert explain.status_code == 200 and "cas blame" in explain.text
        assert " revoked " in explain.text and " added " in explain.text and "miscompiled" in explain.text
        # An env that is no hex id is the form's answer, not a 500.
        odd = httpx.get(f"{server.url}/ui/explain", params={"key": "fgraphkey", "env": "not-hex"})
        assert odd.status_code == 200 and "is not a hex id prefix" in odd.text
    finally:
        server.stop()
