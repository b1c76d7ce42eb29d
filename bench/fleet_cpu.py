"""CPU seconds of one machine of a fleet: `cas clone` of bench_fleet's pin against a raw
GET of the same bytes, one process (or ``--at-once P``) at a time (issue 20, point 3).

On a machine whose cores the clients and the server share, a fleet's cas/raw ratio is,
to first order, a raw GET's CPU over a clone's; CPU seconds of one process (utime +
stime of the child, from ``os.wait4``) are far steadier on a shared machine than wall
time, so this is the measure to cut against between full fleets.

The pin is built once (``bench_fleet.build_pin``, ``CAS_FLEET_PIN_MB``, default 64) and
served by `cas serve` (beside the raw uvicorn file server) and by SeaweedFS (pushed;
beside raw ``get_object``), as bench_fleet serves them. Then ``K`` rounds
(``--rounds K``, default 5), each running one machine of every case in turn, so that
the cases alternate under the same load:

* ``cas``: ``cas clone URL STORE`` with this tree;
* ``base``: the same with another tree (``--base DIR``: a dir holding ``cas/`` and
  ``cas_cli/``, e.g. a ``git archive`` of the base commit with ``cli`` renamed; it is put
  first on ``PYTHONPATH``), only when given;
* ``raw``: bench_fleet's raw client for the target.

A machine is bench_fleet's (``new_machine``: empty store, torch cache, TMPDIR, XDG).
Every clone's store is checked with `cas fsck` after it is measured (not counted).

``--at-once P``: each round starts P machines of a case together (bench_fleet's
``run_fleet``), as a small fleet, and reports their mean CPU.
``--importtime``: the 25 slowest imports (cumulative) of one clone (``python -X
importtime``); ``--profile``: cProfile of one clone in its own process (the 30 costliest
functions, cumulative and own time). ``--no-serve`` / ``--no-s3`` pick the targets.

Run: ``.venv/bin/python bench/fleet_cpu.py --rounds 5 [--base /tmp/base] [--at-once 16]
[--profile]``. The base tree and this one are byte-compiled first (bench_fleet.compile_tree).
"""

from __future__ import annotations

import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import bench_fleet as fleet
from bench_fleet import CAS, RAW_HTTP_CLIENT, RAW_S3_CLIENT, RAW_SERVER, new_machine
from servers import S3_KEY, S3_REGION, S3_SECRET, Seaweed, Served, free_port

from cas.store import Store

Command = Callable[[Path], list[str]]


@dataclass
class Target:
    """What a machine of one target runs: the clone, the raw GET, and their env."""

    name: str
    clone: Callable[[list[str], Path], list[str]]  # (cas launcher, machine home) -> argv
    raw: Command
    clone_env: dict[str, str]
    raw_env: dict[str, str] = field(default_factory=dict)


def launcher(base: Path | None) -> tuple[list[str], dict[str, str]]:
    """The `cas` command of this tree, or of the tree at ``base`` (first on PYTHONPATH)."""
    if base is None:
        return CAS, {}
    return CAS, {"PYTHONPATH": str(base)}


@dataclass
class Case:
    label: str
    cmd: Command
    env: dict[str, str]
    fsck: bool
    cpu: list[float] = field(default_factory=list)
    sys: list[float] = field(default_factory=list)
    wall: list[float] = field(default_factory=list)


def run_batch(root: Path, case: Case, at_once: int) -> None:
    """``at_once`` machines of ``case`` started together (bench_fleet.run_fleet): the
    CPU and wall seconds of each appended; then `cas fsck` of each store, not counted."""
    shutil.rmtree(root, ignore_errors=True)
    machines = [new_machine(root, i, case.cmd, case.env) for i in range(at_once)]
    fleet.run_fleet(machines)
    for m in machines:
        if m.rc != 0:
            raise RuntimeError(f"{case.label}: exit {m.rc}: {m.err}")
        case.wall.append(m.end - m.start)
        case.cpu.append(m.cpu)
        case.sys.append(m.sys)
        if case.fsck:
            p = subprocess.run([*CAS, "--store", str(m.store), "fsck"], env=m.env, capture_output=True)
            if p.returncode != 0:
                raise RuntimeError(f"{case.label}: fsck failed: {p.stdout.decode()[-500:]}")
    shutil.rmtree(root, ignore_errors=True)


def cases_of(target: Target, base: Path | None) -> list[Case]:
    cases = [Case(f"{target.name}: cas clone", lambda h: target.clone(CAS, h), target.clone_env, True)]
    if base is not None:
        cmd, env = launcher(base)
        cases.insert(0, Case(f"{target.name}: cas clone (base)", lambda h: target.clone(cmd, h),
                             {**target.clone_env, **env}, True))
    cases.append(Case(f"{target.name}: raw GET", target.raw, target.raw_env, False))
    return cases


def measure(target: Target, base: Path | None, rounds: int, root: Path, at_once: int) -> list[Case]:
    cases = cases_of(target, base)
    for _ in range(rounds):
        for case in cases:
            run_batch(root, case, at_once)
    return cases


def importtime(target: Target, root: Path, top: int = 25) -> str:
    """The ``top`` slowest imports (cumulative microseconds) of one clone."""
    shutil.rmtree(root, ignore_errors=True)
    m = new_machine(root, 0, lambda h: target.clone(CAS, h), target.clone_env)
    cmd = [m.cmd[0], "-X", "importtime", *m.cmd[1:]]
    p = subprocess.run(cmd, env=m.env, capture_output=True, text=True, check=True)
    shutil.rmtree(root, ignore_errors=True)
    rows = []
    for line in p.stderr.splitlines():
        hit = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|(\s*)(\S+)", line)
        if hit:
            rows.append((int(hit[2]), int(hit[1]), hit[4]))
    total = sum(own for _, own, _ in rows)
    rows.sort(reverse=True)
    lines = [f"imports: {len(rows)} modules, {total / 1e6:.3f} s own time in all"]
    lines += [f"  {cum / 1e3:8.1f} ms cumulative {own / 1e3:7.1f} ms own  {name}" for cum, own, name in rows[:top]]
    return "\n".join(lines)


PROFILE = """
import cProfile, pstats, sys
from cas_cli.main import cli
prof = cProfile.Profile()
prof.enable()
try:
    cli.main(sys.argv[2:], prog_name="cas", standalone_mode=False)
finally:
    prof.disable()
    stats = pstats.Stats(prof, stream=sys.stderr)
    stats.sort_stats("cumulative").print_stats(int(sys.argv[1]))
    stats.sort_stats("tottime").print_stats(int(sys.argv[1]))
"""


def profile(target: Target, root: Path, top: int = 30) -> str:
    """cProfile of one clone in a process of its own (what cumulates, and own time)."""
    shutil.rmtree(root, ignore_errors=True)
    m = new_machine(root, 0, lambda h: target.clone(CAS, h), target.clone_env)
    args = m.cmd[m.cmd.index("clone"):]
    p = subprocess.run([sys.executable, "-c", PROFILE, str(top), *args], env=m.env, capture_output=True,
                       text=True, check=True)
    shutil.rmtree(root, ignore_errors=True)
    return p.stderr


@contextmanager
def serve_target(tmp: Path, total: int) -> Iterator[Target]:
    """The pin behind `cas serve`, and its bytes behind the raw uvicorn file server."""
    built: dict[str, object] = {}

    def prepare(store: Store) -> None:
        built["bytes"], built["arts"] = fleet.build_pin(store, total)

    served = Served(tmp / "serve", prepare=prepare)
    names = fleet.write_parts(built.pop("arts"), tmp / "raw-files")  # type: ignore[arg-type]
    port = free_port()
    raw = subprocess.Popen([sys.executable, "-c", RAW_SERVER, str(tmp / "raw-files"), str(port)])
    try:
        fleet._wait_http(f"http://127.0.0.1:{port}/")
        yield Target(
            "cas serve",
            lambda cas, h: [*cas, "clone", served.url, str(h / "store")],
            lambda h: [sys.executable, "-c", RAW_HTTP_CLIENT, f"http://127.0.0.1:{port}/raw/", str(h / "copy"),
                       *names],
            {"CAS_TOKEN": served.read_token},
        )
    finally:
        raw.kill()
        raw.wait()
        served.stop()


@contextmanager
def s3_target(tmp: Path, total: int) -> Iterator[Target]:
    """The pin pushed to SeaweedFS, and its bytes as raw objects in another bucket."""
    weed = Seaweed(tmp / "seaweed")
    try:
        made = fleet.s3_pin(weed, tmp, total)
        url, raw_bucket, keys = made.url, made.raw_bucket, made.keys
        creds = {"AWS_ACCESS_KEY_ID": S3_KEY, "AWS_SECRET_ACCESS_KEY": S3_SECRET, "AWS_DEFAULT_REGION": S3_REGION}
        yield Target(
            "S3",
            lambda cas, h: [*cas, "clone", url, str(h / "store"), "-o", f"endpoint={weed.endpoint}"],
            lambda h: [sys.executable, "-c", RAW_S3_CLIENT, weed.endpoint, raw_bucket, str(h / "copy"), *keys],
            creds,
            creds,
        )
    finally:
        weed.stop()


def report(cases: list[Case], at_once: int) -> str:
    """A markdown table: per case, the mean CPU seconds of a machine in each round."""
    raw = statistics.mean(cases[-1].cpu)
    lines = ["| case | CPU s per machine (each round, in order) | mean | of which system | raw/this CPU | wall s mean |",
             "|---|---|---|---|---|---|"]
    for c in cases:
        mean = statistics.mean(c.cpu)
        runs = " / ".join(f"{statistics.mean(c.cpu[i : i + at_once]):.2f}" for i in range(0, len(c.cpu), at_once))
        lines.append(f"| {c.label} | {runs} | {mean:.3f} | {statistics.mean(c.sys):.3f} | {raw / mean:.2f} "
                     f"| {statistics.mean(c.wall):.2f} |")
    return "\n".join(lines)


def _arg(name: str, default: str | None) -> str | None:
    return sys.argv[sys.argv.index(name) + 1] if name in sys.argv else default


def main() -> None:
    rounds = int(_arg("--rounds", "5") or 5)
    at_once = int(_arg("--at-once", "1") or 1)
    base_arg = _arg("--base", None)
    base = Path(base_arg).resolve() if base_arg else None
    total = int(fleet.PIN_MB * 2**20) if "CAS_FLEET_PIN_MB" in os.environ else 64 << 20
    fleet.compile_tree()
    if base is not None:
        fleet.compile_tree(base)
    tmp = Path(tempfile.mkdtemp(prefix="cas-fleet-cpu-"))
    makers = [(name, maker) for name, maker in (("serve", serve_target), ("s3", s3_target))
              if f"--no-{name}" not in sys.argv]
    try:
        for _name, maker in makers:
            with maker(tmp / _name, total) as target:
                print(f"## {target.name}, pin {total >> 20} MiB, {rounds} rounds of {at_once} at once, "
                      f"load {os.getloadavg()[0]:.1f}", flush=True)
                if "--importtime" in sys.argv:
                    print(importtime(target, tmp / "m"), flush=True)
                if "--profile" in sys.argv:
                    print(profile(target, tmp / "m"), flush=True)
                if rounds:
                    print(report(measure(target, base, rounds, tmp / "m", at_once), at_once), flush=True)
                print(f"load after: {os.getloadavg()[0]:.1f}\n", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
