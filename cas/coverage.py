"""What a pin covers: ``cas coverage REF`` and the miss reports machines send back.

A coverage reads one ref's manifest once and its history's commit metadata, never a blob:

* per env: the env's fields (device, torch, Python, Triton/CUDA, CPU ISA and threads),
  its entries and bytes by kind, the C++ toolchains its entries were built with (entry
  metadata ``cxx``/``cxx_version``) and the CPU models its C++ entries are for (the
  ``cpu-<fingerprint>`` variants);
* per kind: how many entries;
* graphs: each FX graph, AOTAutograd or precompiled key with its guard variants (the
  shapes it holds entries for) and the envs that hold it;
* per recorder: the program (``cas run --record`` names it) or producer that committed
  into the ref's history, with its hosts, envs and entry counts (commit metadata);
* misses: what machines that started from this pin reported (:func:`make_report`).

**Miss reports** travel like commits: a report is a commit with the empty manifest on the
branch ``cas/reports/<host>`` of the store that ran (docs/format.md, "Miss reports"), so
``cas push origin cas/reports/<host>`` carries it and a fetch brings others'. Coverage
counts the reports, on ``refs/heads/cas/reports/*`` and ``refs/remotes/*/cas/reports/*``,
whose ``pin`` is the ref's commit. A report is small by construction (the bounds below).

``--env current`` (:class:`Here`, computed in cas.torch.explain, which knows this
process's env) judges the pin for one machine before anything is hydrated.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from cas import history, manifest, refs
from cas.codec import ObjType
from cas.digest import ObjectId
from cas.objects import Entry, EntryKey, Env
from cas.store import Store

__all__ = [
    "GRAPH_KINDS", "REPORT_BRANCH", "Coverage", "Here", "coverage", "judge", "make_report",
    "report_branch", "reports", "run_reports", "write_report",
]  # fmt: skip

#: Kinds whose keys name a compiled graph (their variants are its guard/shape variants).
GRAPH_KINDS = ("inductor", "aot_autograd", "precompile")
#: Graphs listed by name (text, JSON, web page); the counts always cover all of them.
GRAPHS_SHOWN = 200
#: Commits read per ref's history for recorders, and per report branch for reports.
HISTORY_WALK = 1000
#: Branch prefix of miss reports; a report branch is per host.
REPORT_BRANCH = "cas/reports/"
#: Bounds of one report: kinds, missed keys per kind, rebuild lines, text per field.
REPORT_KINDS, REPORT_KEYS, REPORT_REBUILDS, REPORT_TEXT = 16, 32, 16, 200
#: Missed keys listed in a coverage (the most reported first).
MISSED_SHOWN = 50
_HOST_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")
#: A raw 32-byte env id: coverage keys by these, since hashing an ObjectId runs Python code.
RawId = bytes


@dataclass
class EnvCoverage:
    """What a ref holds for one env."""

    env: ObjectId
    fields: dict[str, str] = field(default_factory=dict)
    entries: int = 0
    bytes: int = 0
    kinds: Counter[str] = field(default_factory=Counter)
    toolchains: set[str] = field(default_factory=set)
    cpus: set[str] = field(default_factory=set)

    def add(self, key: EntryKey, entry: Entry) -> None:
        self.entries += 1
        self.bytes += entry.size
        self.kinds[key.kind] += 1
        if key.variant.startswith("cpu-"):
            self.cpus.add(key.variant[4:])
        if "cxx" in entry.meta:
            self.toolchains.add(f"{entry.meta['cxx']} {entry.meta.get('cxx_version', '?')}".strip())

    def to_dict(self) -> dict[str, Any]:
        return {"env": self.env.hex, "fields": self.fields, "entries": self.entries, "bytes": self.bytes,
                "kinds": dict(sorted(self.kinds.items())), "toolchains": sorted(self.toolchains),
                "cpus": sorted(self.cpus)}

    def line(self) -> str:
        f = self.fields
        device = f.get("gpu") or f"cpu {f.get('cpu_isa', '?')} x{f.get('threads', '?')}"
        if f.get("device") == "cuda":
            device = f"{device} (sm {f.get('gpu_capability', '?')})"
        return (f"{self.env.short()}  {device}, torch {f.get('torch_version', '?')}, "
                f"python {f.get('python', '?')}: {self.entries} entries ({_kinds_text(self.kinds)})")


@dataclass
class Graph:
    """One compiled graph's key in one kind: its variants (guards, shapes) and envs."""

    kind: str
    key: str
    variants: set[str]
    envs: set[RawId]

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "key": self.key, "variants": sorted(self.variants),
                "envs": sorted(e.hex() for e in self.envs)}


@dataclass
class Recorder:
    """A program or producer that committed into the ref's history."""

    name: str
    producers: set[str] = field(default_factory=set)
    hosts: set[str] = field(default_factory=set)
    envs: set[str] = field(default_factory=set)
    commits: int = 0
    entries: int = 0
    last: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "producers": sorted(self.producers), "hosts": sorted(self.hosts),
                "envs": sorted(self.envs), "commits": self.commits, "entries": self.entries, "last": self.last}


@dataclass
class Misses:
    """The miss reports of machines that started from the pin, summed."""

    reports: int = 0
    hosts: set[str] = field(default_factory=set)
    envs: set[str] = field(default_factory=set)
    lookups: dict[str, Counter[str]] = field(default_factory=dict)
    missed: Counter[tuple[str, str]] = field(default_factory=Counter)
    rebuilds: Counter[tuple[str, str]] = field(default_factory=Counter)

    def add(self, report: Mapping[str, Any]) -> None:
        self.reports += 1
        self.hosts.add(str(report.get("host", "?")))
        if report.get("env"):
            self.envs.add(str(report["env"]))
        for kind, counts in _mapping(report.get("lookups")).items():
            got = self.lookups.setdefault(str(kind), Counter())
            for what in ("hits", "misses"):
                got[what] += _int(_mapping(counts).get(what))
        for kind, keys in _mapping(report.get("missed")).items():
            self.missed.update((str(kind), str(k)) for k in keys if isinstance(keys, list))
        for r in report.get("rebuilds") or []:
            if isinstance(r, Mapping):
                self.rebuilds[(str(r.get("kind", "?")), str(r.get("reason", "?")))] += _int(r.get("count"))

    def to_dict(self) -> dict[str, Any]:
        return {
            "reports": self.reports, "hosts": sorted(self.hosts), "envs": sorted(self.envs),
            "lookups": {k: {"hits": c["hits"], "misses": c["misses"]} for k, c in sorted(self.lookups.items())},
            "missed": [{"kind": k, "key": key, "count": n} for (k, key), n in self.missed.most_common(MISSED_SHOWN)],
            "rebuilds": [{"kind": k, "reason": why, "count": n} for (k, why), n in self.rebuilds.most_common()],
        }


@dataclass
class Here:
    """Will a machine of env ``env`` start warm from the pin, and what will it compile?

    ``envs`` are cas.torch.explain's per-env verdicts (matches, and the differing fields
    otherwise); ``warmth`` what it predicts torch still rebuilds; ``compile`` counts, per
    kind, the graphs the pin holds only for other envs; ``graphs`` names the first of them.
    """

    env: str
    entries: int
    kinds: dict[str, int]
    compile: dict[str, int]
    graphs: list[dict[str, Any]]
    envs: list[dict[str, Any]]
    warmth: dict[str, Any]

    @property
    def warm(self) -> str:
        """``yes`` (all of it applies), ``partly`` or ``no`` (nothing for this env)."""
        if not self.entries:
            return "no"
        return "yes" if not self.compile and self.warmth.get("fully_warm", True) else "partly"

    def to_dict(self) -> dict[str, Any]:
        return {"env": self.env, "warm": self.warm, "entries": self.entries, "kinds": self.kinds,
                "compile": self.compile, "graphs": self.graphs, "envs": self.envs, "warmth": self.warmth}

    def lines(self) -> list[str]:
        out = [f"this machine (env {self.env[:12]}): warm start: {self.warm}; "
               f"{self.entries} entries apply ({_kinds_text(self.kinds)})"]
        out += [f"  will compile: {n} {kind} graph(s) the pin holds only for other envs"
                for kind, n in sorted(self.compile.items())]
        out += [f"  will not hit: {r['line']}" for r in self.warmth.get("rebuilds", [])]
        for e in self.envs:
            if not e["matches"]:
                out.append(f"  env {e['env'][:12]} does not apply"
                           + ("; differs in:" if e["diff"] else " (its env object is missing)"))
                out += [f"      {d['field']}: entry has {d['entry']!r}, this machine has {d['here']!r}"
                        for d in e["diff"]]
        return out


@dataclass
class Coverage:
    """What ``ref`` (commit ``commit``) covers; see the module docstring."""

    ref: str
    commit: ObjectId
    entries: int = 0
    bytes: int = 0
    kinds: Counter[str] = field(default_factory=Counter)
    envs: dict[RawId, EnvCoverage] = field(default_factory=dict)
    graphs: dict[tuple[str, str], Graph] = field(default_factory=dict)
    recorders: dict[str, Recorder] = field(default_factory=dict)
    misses: Misses = field(default_factory=Misses)
    here: Here | None = None

    def add(self, key: EntryKey, entry: Entry) -> None:
        self.entries += 1
        self.bytes += entry.size
        self.kinds[key.kind] += 1
        # get, then create: setdefault would build an EnvCoverage/Graph per entry; and
        # raw ids as keys (ObjectId hashes in Python): each cost more than the manifest
        # walk itself at 10^5 entries.
        raw = key.env.raw
        env = self.envs.get(raw)
        if env is None:
            env = self.envs[raw] = EnvCoverage(key.env)
        env.add(key, entry)
        if key.kind in GRAPH_KINDS:
            g = self.graphs.get((key.kind, key.key))
            if g is None:
                g = self.graphs[(key.kind, key.key)] = Graph(key.kind, key.key, set(), set())
            g.variants.add(key.variant)
            g.envs.add(raw)

    def graph_list(self) -> list[Graph]:
        """The graphs by kind and key, at most GRAPHS_SHOWN."""
        return [self.graphs[k] for k in sorted(self.graphs)[:GRAPHS_SHOWN]]

    def to_dict(self) -> dict[str, Any]:
        out = {
            "ref": self.ref, "commit": self.commit.hex, "entries": self.entries, "bytes": self.bytes,
            "kinds": dict(sorted(self.kinds.items())),
            "envs": [e.to_dict() for _, e in sorted(self.envs.items())],
            "graphs": {"total": len(self.graphs), "variants": sum(len(g.variants) for g in self.graphs.values()),
                       "shown": [g.to_dict() for g in self.graph_list()]},
            "recorders": [r.to_dict() for _, r in sorted(self.recorders.items())],
            "misses": self.misses.to_dict(),
        }
        if self.here is not None:
            out["here"] = self.here.to_dict()
        return out

    def lines(self) -> list[str]:
        """A human account, one fact per line."""
        variants = sum(len(g.variants) for g in self.graphs.values())
        out = [f"{self.ref} ({self.commit.short()}): {self.entries} entries, {len(self.envs)} env(s), "
               f"{len(self.graphs)} graphs in {variants} variants ({_kinds_text(self.kinds)})"]
        out += ["envs:"] + [f"  {e.line()}" for _, e in sorted(self.envs.items())]
        out += ["recorded by:"] + [
            f"  {r.name}: {r.commits} commit(s), {r.entries} entries, on {', '.join(sorted(r.hosts)) or '?'}"
            for _, r in sorted(self.recorders.items())]
        out += _miss_lines(self.misses)
        return out + (self.here.lines() if self.here is not None else [])


def _miss_lines(m: Misses) -> list[str]:
    if not m.reports:
        return ["misses: no reports for this pin (`cas run --report-misses`)"]
    out = [f"misses: {m.reports} report(s) from {', '.join(sorted(m.hosts))}"]
    out += [f"  {kind}: {c['hits']} hit / {c['misses']} miss" for kind, c in sorted(m.lookups.items())]
    out += [f"  missed {kind} {key} ({n}x)" for (kind, key), n in m.missed.most_common(10)]
    return out


def _kinds_text(kinds: Mapping[str, int]) -> str:
    return ", ".join(f"{k} {n}" for k, n in sorted(kinds.items())) or "none"


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


# -- computing a coverage ---------------------------------------------------------------


def coverage(store: Store, ref: str) -> Coverage:
    """The coverage of ``ref`` (a branch, tag, remote-tracking ref or commit).

    Reads the manifest once (O(entries)), the env objects, the metadata of the newest
    HISTORY_WALK commits of the ref, and the report branches; raises RefNotFound for an
    unknown ref.
    """
    commit = refs.resolve(store, ref)
    cov = Coverage(ref, commit)
    for key, entry in manifest.entries(store, refs.load_commit(store, commit).manifest):
        cov.add(key, entry)
    for env in cov.envs.values():
        env.fields = _env_fields(store, env.env)
    for _, c in history.log(store, commit, limit=HISTORY_WALK):
        _add_recorder(cov.recorders, c.metadata, c.time)
    for report in reports(store, commit):
        cov.misses.add(report)
    return cov


def _env_fields(store: Store, oid: ObjectId) -> dict[str, str]:
    got = store.objects.get_typed(oid)
    return dict(Env.decode(got[1]).fields) if got is not None and got[0] == ObjType.ENV else {}


def _add_recorder(recorders: dict[str, Recorder], meta: Mapping[str, Any], when: int) -> None:
    producer = str(meta.get("producer", ""))
    if not producer or producer in ("merge", "report"):
        return  # a merge records nothing itself; its parents' commits are counted
    name = str(meta.get("program") or producer)
    r = recorders.setdefault(name, Recorder(name))
    r.producers.add(producer)
    r.commits += 1
    r.last = max(r.last, when)
    if meta.get("host"):
        r.hosts.add(str(meta["host"]))
    if meta.get("env"):
        r.envs.add(str(meta["env"]))
    counts = meta.get("kinds") or meta.get("counts")  # older capture commits said "counts" (format.md §10)
    r.entries += sum(_int(n) for n in counts.values()) if isinstance(counts, Mapping) else _int(meta.get("entries"))


def judge(cov: Coverage, env: str, envs: list[dict[str, Any]], warmth: dict[str, Any]) -> Here:
    """The verdict for a machine of env ``env`` (hex), given cas.torch.explain's per-env
    verdicts ``envs`` and predicted ``warmth`` for it."""
    raw = bytes.fromhex(env)
    mine = cov.envs.get(raw)
    elsewhere = [g for g in cov.graph_list() if raw not in g.envs]
    compile_ = Counter(g.kind for g in cov.graphs.values() if raw not in g.envs)
    return Here(env, mine.entries if mine else 0, dict(sorted(mine.kinds.items())) if mine else {},
                dict(sorted(compile_.items())), [g.to_dict() for g in elsewhere], envs, warmth)


# -- miss reports -----------------------------------------------------------------------


def report_branch(host: str) -> str:
    """The branch a host's reports go on (the host name made ref-safe)."""
    return REPORT_BRANCH + (_HOST_SAFE.sub("-", host).strip(".-")[:64] or "unknown")


def make_report(
    *, pin: ObjectId, ref: str, host: str, env: str | None, time: int, processes: int,
    lookups: Mapping[str, Mapping[str, int]], missed: Mapping[str, Iterable[str]],
    rebuilds: Iterable[Mapping[str, Any]],
) -> dict[str, Any]:
    """A report as it is stored (commit metadata ``report``), cut to the REPORT_* bounds.

    ``lookups`` is ``{kind: {"hits": n, "misses": n}}``, ``missed`` the keys that missed
    per kind, ``rebuilds`` the warmth lines (kind, count, reason) of the run.
    """
    kinds = sorted(lookups)[:REPORT_KINDS]
    return {
        "version": 1, "pin": pin.hex, "ref": ref[:REPORT_TEXT], "host": host[:REPORT_TEXT],
        "env": env, "time": int(time), "processes": int(processes),
        "lookups": {k[:REPORT_TEXT]: {w: _int(lookups[k].get(w)) for w in ("hits", "misses")} for k in kinds},
        "missed": {k[:REPORT_TEXT]: sorted({str(x)[:REPORT_TEXT] for x in keys})[:REPORT_KEYS]
                   for k, keys in sorted(missed.items())[:REPORT_KINDS]},
        "rebuilds": [{"kind": str(r.get("kind", "?"))[:REPORT_TEXT], "count": _int(r.get("count")),
                      "reason": str(r.get("reason", ""))[:REPORT_TEXT]} for r in list(rebuilds)[:REPORT_REBUILDS]],
    }


def run_reports(lines: Iterable[Mapping[str, Any]], *, host: str, time: int) -> list[dict[str, Any]]:
    """One report per pin from ``cas run``'s per-process stats lines (what
    cas.torch.enable writes at exit: ``commit``, ``ref``, ``env``, torch's ``counters``,
    the live backend's ``live`` counts and ``missed`` keys, ``warmth``). Processes that
    started from no commit report nothing."""
    by_pin: dict[str, list[Mapping[str, Any]]] = {}
    for line in lines:
        if isinstance(line.get("commit"), str):
            by_pin.setdefault(line["commit"], []).append(line)
    return [_run_report(pin, group, host, time) for pin, group in by_pin.items()]


def _run_report(pin: str, group: list[Mapping[str, Any]], host: str, time: int) -> dict[str, Any]:
    lookups: dict[str, Counter[str]] = {}
    missed: dict[str, set[str]] = {}
    rebuilds: list[Mapping[str, Any]] = []
    for line in group:
        live = _mapping(line.get("live"))
        for kind, counts in _lookups_of(line).items():
            lookups.setdefault(kind, Counter()).update(counts)
        for kind, keys in _mapping(live.get("missed")).items():
            missed.setdefault(str(kind), set()).update(str(k) for k in keys if isinstance(keys, list))
        rebuilds += [r for r in _mapping(line.get("warmth")).get("rebuilds") or [] if isinstance(r, Mapping)]
    first = group[0]
    return make_report(pin=ObjectId.parse(pin), ref=str(first.get("ref", "")), host=host,
                       env=first.get("env") if isinstance(first.get("env"), str) else None, time=time,
                       processes=len(group), lookups=lookups, missed=missed, rebuilds=rebuilds)


def _lookups_of(line: Mapping[str, Any]) -> dict[str, dict[str, int]]:
    """Hits and misses per kind: torch's own counters for FX graphs and AOTAutograd
    (they count hydrated hits too), the live backend's for the other kinds."""
    counters = _mapping(line.get("counters"))
    fx, aot = _mapping(counters.get("inductor")), _mapping(counters.get("aot_autograd"))
    out = {kind: {"hits": _int(c.get("hits")), "misses": _int(c.get("misses"))}
           for kind, c in _mapping(_mapping(line.get("live")).get("by_kind")).items() if isinstance(c, Mapping)}
    if fx:
        out["inductor"] = {"hits": _int(fx.get("fxgraph_cache_hit")), "misses": _int(fx.get("fxgraph_cache_miss"))}
    if aot:
        out["aot_autograd"] = {"hits": _int(aot.get("autograd_cache_hit")),
                               "misses": _int(aot.get("autograd_cache_miss"))}
    return out


def write_report(store: Store, report: Mapping[str, Any]) -> ObjectId:
    """Commit ``report`` (from :func:`make_report`) on its host's report branch."""
    meta = {"producer": "report", "host": report["host"], "report": dict(report)}
    message = f"miss report: {report['ref']} on {report['host']}"
    return history.commit_changes(store, report_branch(str(report["host"])), {}, message, meta)


def reports(store: Store, pin: ObjectId) -> list[Mapping[str, Any]]:
    """The reports about commit ``pin`` on every report branch, local or fetched (each
    report once, however many branches reach it; HISTORY_WALK commits per branch)."""
    tips = [oid for name, oid in store.refs.as_dict("refs/").items() if _is_report_ref(name)]
    seen: set[ObjectId] = set()
    out: list[Mapping[str, Any]] = []
    for tip in tips:
        for oid, c in history.log(store, tip, limit=HISTORY_WALK):
            report = c.metadata.get("report")
            if oid in seen or c.metadata.get("producer") != "report" or not isinstance(report, Mapping):
                continue
            seen.add(oid)
            if report.get("pin") == pin.hex:
                out.append(report)
    return out


def _is_report_ref(name: str) -> bool:
    heads = refs.HEADS + REPORT_BRANCH
    return name.startswith(heads) or (name.startswith(refs.REMOTES) and f"/{REPORT_BRANCH}" in name)
