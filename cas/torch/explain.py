"""Why an entry of a ref does not apply to this process: ``cas explain``.

An entry is served only to a process whose env id equals the entry's env (and, for C++
kernels and GEMM timings, whose CPU model matches the entry's variant). When a lookup
misses although the store "has" the artifact, the reason is nearly always one env field:
another torch build, another thread count, another ``cache_key_tag``. This module finds
the entries of a key, picks the one whose env is nearest to this process's (fewest
differing fields) and lists the fields that differ.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from cas import manifest, revocations
from cas.codec import ObjType
from cas.coverage import Coverage, Here, judge
from cas.digest import ObjectId
from cas.objects import EntryKey, Env
from cas.refs import load_commit, resolve
from cas.store import Store

__all__ = ["EnvReport", "Explanation", "coverage_here", "explain_env", "explain_key"]

Diff = list[tuple[str, str | None, str | None]]


def _load_env(store: Store, oid: ObjectId) -> Env | None:
    got = store.objects.get_typed(oid)
    if got is None or got[0] != ObjType.ENV:
        return None
    return Env.decode(got[1])


def _diff(store: Store, oid: ObjectId, here: Env, cache: dict[ObjectId, Diff | None]) -> Diff | None:
    from cas.torch.env import env_diff

    if oid not in cache:
        env = _load_env(store, oid)
        cache[oid] = None if env is None else env_diff(env, here)
    return cache[oid]


@dataclass
class Explanation:
    """The verdict for one cache key in one ref.

    ``status`` is ``applies`` (an entry for this env exists), ``other-cpu`` (this env, but
    built for another CPU model), ``other-env`` (only other envs hold it; ``diff`` lists
    the fields of the nearest one that differ, as ``(field, entry's, here)``) or
    ``absent`` (the ref does not hold the key at all), or ``revoked`` (entries for this
    env exist, and every one is revoked: ``revoked`` says by whom and why).
    """

    key: str
    ref: str
    commit: ObjectId
    here: ObjectId
    status: str
    matches: list[EntryKey] = field(default_factory=list)
    nearest: ObjectId | None = None
    diff: Diff = field(default_factory=list)
    others: int = 0
    revoked: list[revocations.Revoked] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "ref": self.ref,
            "commit": str(self.commit),
            "env_here": str(self.here),
            "status": self.status,
            "matches": [str(k) for k in self.matches],
            "nearest_env": str(self.nearest) if self.nearest else None,
            "diff": [{"field": f, "entry": a, "here": b} for f, a, b in self.diff],
            "entries_of_other_envs": self.others,
            "revoked": [r.to_dict() for r in self.revoked],
        }

    def lines(self) -> list[str]:
        """A human account, one fact per line."""
        return self._verdict() + [f"  {r.entry}: {r.line()}" for r in self.revoked]

    def _verdict(self) -> list[str]:
        if self.status == "revoked":
            return [f"{self.key}: revoked; torch compiles it here instead"]
        if self.status == "absent":
            return [f"{self.key}: not in {self.ref} ({self.commit.short()}) for any env"]
        if self.status == "applies":
            return [f"{self.key}: applies here ({len(self.matches)} entr{'y' if len(self.matches) == 1 else 'ies'}: "
                    + ", ".join(f"{k.kind}{'#' + k.variant if k.variant else ''}" for k in self.matches) + ")"]
        if self.status == "other-cpu":
            return [f"{self.key}: held for this env, but built for another CPU model "
                    f"(variant {self.matches[0].variant}); it is not handed to this CPU"]
        head = (f"{self.key}: does not apply here; {self.others} entr{'y is' if self.others == 1 else 'ies are'} "
                f"for other envs, nearest {self.nearest.short() if self.nearest else '?'} differs in:")
        if not self.diff:
            return [head.replace(" differs in:", " (its env object is missing)")]
        return [head] + [f"  {f}: entry has {a!r}, this process has {b!r}" for f, a, b in self.diff]


def _root(store: Store, ref: str) -> tuple[ObjectId, ObjectId]:
    commit = resolve(store, ref)
    return commit, load_commit(store, commit).manifest


def explain_key(store: Store, ref: str, key: str, here: Env | None = None) -> Explanation:
    """Explain whether torch cache key ``key`` (or a unique-enough prefix) applies here."""
    from cas.torch.env import cpu_fingerprint, current_env
    from cas.torch.kinds import CPU_BOUND_KINDS

    here = here or current_env()
    here_id = here.id
    commit, root = _root(store, ref)
    mine: list[EntryKey] = []
    theirs: list[EntryKey] = []
    revoked = revocations.load(store)
    withheld: dict[EntryKey, revocations.Revoked] = {}
    for ek, entry in manifest.entries(store, root):
        if ek.key == key or (len(key) >= 8 and ek.key.startswith(key)):
            (mine if ek.env == here_id else theirs).append(ek)
            if (why := revoked.get(entry.blob)) is not None:
                withheld[ek] = why
    out = Explanation(key, ref, commit, here_id, "absent", others=len(theirs), revoked=list(withheld.values()))
    if mine:
        cpu = f"cpu-{cpu_fingerprint()}"
        usable = [k for k in mine if k.kind not in CPU_BOUND_KINDS or k.variant == cpu]
        out.status, out.matches = ("applies", usable) if usable else ("other-cpu", mine)
        if usable and all(k in withheld for k in usable):
            out.status = "revoked"
        return out
    if theirs:
        cache: dict[ObjectId, Diff | None] = {}
        ranked = sorted(
            {ek.env for ek in theirs},
            key=lambda e: (len(d) if (d := _diff(store, e, here, cache)) is not None else 1 << 30, e),
        )
        out.status, out.nearest = "other-env", ranked[0]
        out.diff = _diff(store, ranked[0], here, cache) or []
    return out


@dataclass
class EnvReport:
    """The envs a ref holds entries for, and how each differs from this process's."""

    ref: str
    commit: ObjectId
    here: ObjectId
    envs: list[dict[str, Any]] = field(default_factory=list)
    #: What torch will still rebuild from this env's entries (CPU, toolchain, headers).
    warmth: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"ref": self.ref, "commit": str(self.commit), "env_here": str(self.here), "envs": self.envs,
                "warmth": self.warmth}

    def lines(self) -> list[str]:
        out = [f"this process: env {self.here.short()}; {self.ref} ({self.commit.short()}) holds {len(self.envs)} env(s)"]
        for e in self.envs:
            kinds = ", ".join(f"{k} {n}" for k, n in sorted(e["kinds"].items()))
            if e["matches"]:
                out.append(f"  {e['env'][:12]}  applies here  {e['entries']} entries ({kinds})")
                out.extend(f"      will not hit: {r['line']}" for r in self.warmth.get("rebuilds", []))
                continue
            out.append(f"  {e['env'][:12]}  does not apply  {e['entries']} entries ({kinds}); differs in:")
            out.extend(f"      {d['field']}: entry has {d['entry']!r}, this process has {d['here']!r}" for d in e["diff"])
        return out


def explain_env(store: Store, ref: str, here: Env | None = None) -> EnvReport:
    """For each env holding entries in ``ref``: does it apply here, and if not, why."""
    from cas.torch.env import cpu_fingerprint, current_env
    from cas.torch.warmth import predict

    here = here or current_env()
    commit, root = _root(store, ref)
    counts: dict[ObjectId, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for ek, _ in manifest.entries(store, root):
        counts[ek.env][ek.kind] += 1
    report = EnvReport(ref, commit, here.id, warmth=predict(store, root, here, cpu_fingerprint()).to_dict())
    cache: dict[ObjectId, Diff | None] = {}
    for env_id in sorted(counts, key=lambda e: (e != here.id, e)):
        diff = _diff(store, env_id, here, cache)
        report.envs.append(
            {
                "env": str(env_id),
                "matches": env_id == here.id,
                "entries": sum(counts[env_id].values()),
                "kinds": dict(counts[env_id]),
                "diff": [{"field": f, "entry": a, "here": b} for f, a, b in (diff or [])],
                "env_missing": diff is None,
            }
        )
    return report


def coverage_here(store: Store, cov: Coverage, here: Env | None = None) -> Here:
    """``cas coverage REF --env current``: will this process start warm from ``cov``'s
    pin, what will it compile, and why do the other envs not apply (:func:`explain_env`
    on the same commit)."""
    report = explain_env(store, cov.commit.hex, here)
    return judge(cov, report.here.hex, report.envs, report.warmth)
