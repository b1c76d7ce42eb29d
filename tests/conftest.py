"""Shared fixtures: a real store in tmp_path, and the CLI as a user runs it."""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from servers import Seaweed, Served, ServedPool
from testclock import Clock

from cas.store import Store

ROOT = Path(__file__).resolve().parent.parent
#: The installed console script, as a user runs it.
CAS_EXE = str(Path(sys.executable).parent / "cas")
# What cas computes once per torch install goes to a dir of this test run (made by the
# first process of the run, inherited by xdist's workers, removed when that process
# exits), never the user's ~/.cache; tests that stand for a new machine give it its own.
if "CAS_TORCH_ENV_CACHE" not in os.environ:
    os.environ["CAS_TORCH_ENV_CACHE"] = tempfile.mkdtemp(prefix="cas-test-env-cache-")
    atexit.register(shutil.rmtree, os.environ["CAS_TORCH_ENV_CACHE"], ignore_errors=True)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Under CAS_TEST_DISALLOW_SKIP=1 (CI) a skipped test is a failure, not a pass."""
    if os.environ.get("CAS_TEST_DISALLOW_SKIP") == "1" and report.skipped and report.when != "teardown":
        if not hasattr(report, "wasxfail"):
            report.outcome = "failed"
            report.longrepr = f"skipped, but CAS_TEST_DISALLOW_SKIP=1: {report.longrepr}"


@pytest.hookimpl(wrapper=True)
def pytest_collection(session: pytest.Session) -> Iterator[object]:
    """pytest rewrites the asserts of every test module it collects (~2 CPU-s for this
    suite, in each xdist worker) and keeps the result in __pycache__, unless
    PYTHONDONTWRITEBYTECODE is set: then it rewrites them all again in every run. While
    collecting, it may write them (and reads them back in the next run), as `make test`
    byte-compiles cas and the tests; the tests themselves run under the user's setting."""
    keep = sys.dont_write_bytecode
    sys.dont_write_bytecode = False
    try:
        return (yield)
    finally:
        sys.dont_write_bytecode = keep


@pytest.hookimpl(wrapper=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> Iterator[None]:
    """Under pytest-xdist (`make test` runs two workers, ``--dist loadgroup``), torch tests
    that share a cold compile run on one worker, so that each compile happens once per
    test run. The groups are xdist's own, public ``xdist_group`` marks: a module that
    starts from livekit's ``recorded`` run (cached per process) says so itself
    (``pytestmark = livekit.SHARES_RECORDED``), the stock-torch Redis door among them,
    whose recording client starts from that run's C++ build; here, the users of
    ``captured`` (tests/torch/conftest.py) go together, with those of autotune's
    ``tuned``, which starts from ``captured``'s C++ build; and every other torch module
    is a unit of its own. Everything else is spread over both workers as they free up.

    xdist turns the marks into the ``@group`` suffix of node ids that loadgroup schedules
    by, in its own hook of this name, which runs after this wrapper's first half. It sets
    the id pytest 9.1 reads: pytest 9.2 reads another (pytest-dev/pytest-xdist#1386), and
    loadgroup then silently groups nothing, so constraints.txt pins ``pytest<9.2`` and
    :func:`_check_groups` fails the run loudly if the grouping did not take.

    Torch tests come first: xdist hands out the groups by size, then units of one test in
    this order, and a torch module of one slow test (a door test, say) started last
    would leave the other worker idle at the end."""
    torch_dir = Path(__file__).parent / "torch"
    items.sort(key=lambda item: torch_dir not in Path(item.path).parents)
    for item in items:
        if torch_dir not in Path(item.path).parents or item.get_closest_marker("xdist_group"):
            continue
        if "captured" in getattr(item, "fixturenames", ()):
            group = "torch-captured"
        else:
            group = f"torch-{Path(item.path).stem}"
        item.add_marker(pytest.mark.xdist_group(group))
    yield
    _check_groups(config, items)


def _check_groups(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Fail at collection, with the way out, when xdist's ``@group`` suffix did not take
    (every torch test would be a unit of its own and both workers would pay the
    session's cold compiles: a run minutes slower, and otherwise green)."""
    if not getattr(config.option, "loadgroup", False):
        return
    for item in items:
        names = sorted({str(m.args[0] if m.args else m.kwargs.get("name", "default"))
                        for m in item.iter_markers("xdist_group")})
        if names and not item.nodeid.endswith("@" + "_".join(names)):
            raise pytest.UsageError(
                f"pytest-xdist's loadgroup did not group {item.nodeid} (pytest {pytest.__version__}; "
                "pytest-dev/pytest-xdist#1386): install with `-c constraints.txt` (pytest<9.2)")


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    return tmp_path / "store"


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(store_path: Path, clock: Clock) -> Iterator[Store]:
    s = Store.init(store_path, clock=clock)
    try:
        yield s
    finally:
        s.close()


class Cas:
    """Runs the real `cas` executable in a subprocess, as a user would."""

    def __init__(self, store: Path, env: dict[str, str]) -> None:
        self.store = store
        self.env = env

    def __call__(self, *args: str, ok: bool | None = True, input: bytes | None = None,
                 cwd: Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        cmd = [CAS_EXE, "--store", str(self.store), *args]
        proc = subprocess.run(cmd, capture_output=True, env=self.env, input=input.decode() if input else None,
                              text=True, cwd=cwd, timeout=timeout)
        if ok is True and proc.returncode != 0:
            raise AssertionError(f"cas {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        if ok is False and proc.returncode == 0:
            raise AssertionError(f"cas {' '.join(args)} unexpectedly succeeded:\n{proc.stdout}")
        return proc


@pytest.fixture
def cas(store_path: Path, tmp_path: Path) -> Cas:
    env = dict(os.environ)
    env["CAS_AUTHOR"] = "tester@example"
    env["XDG_CACHE_HOME"] = str(tmp_path / "xdg")
    env.pop("CAS_DIR", None)
    return Cas(store_path, env)


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Seaweed]:
    """One SeaweedFS (S3) per test run and worker (it takes seconds to start), killed at
    the end; each test gets a fresh prefix or bucket of its own."""
    server = Seaweed(tmp_path_factory.mktemp("seaweed"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def shared_served(served_pool: ServedPool) -> Iterator[Served]:
    """One server for a module's tests that need no empty remote: their objects are their
    own, and they assert nothing about what else the server holds."""
    s = served_pool.take()
    try:
        yield s
    finally:
        served_pool.give_back(s)


@pytest.fixture(scope="session")
def served_pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServedPool]:
    pool = ServedPool(tmp_path_factory.mktemp("served"))
    try:
        yield pool
    finally:
        pool.close()


@pytest.fixture
def served(served_pool: ServedPool) -> Iterator[Served]:
    """`cas serve` over a fresh store on 127.0.0.1, with tokens; stopped after the test
    (started ahead of time by the session's pool)."""
    s = served_pool.take()
    try:
        yield s
    finally:
        served_pool.give_back(s)
