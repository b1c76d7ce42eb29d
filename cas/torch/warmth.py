"""How warm a start is: what torch will still build here, and roughly what it costs.

Two views, one report shape (:class:`Warmth`):

* :func:`predict`, before anything runs (``cas hydrate``, the start of ``cas run`` and
  ``backend="cas"``): from what a ref holds for this env, this CPU and this C++ toolchain.
  A ref with C++ kernels but no precompiled header for this CPU means torch spends ~10 s
  of g++ on the header; kernels built for another CPU or with another compiler (torch
  names C++ files by the compiler's ``-v`` output) will be rebuilt.
* :func:`observed`, after a process ran (``cas run``'s summary, ``backend="cas"`` at
  exit): the C++ files torch built in this process (:func:`cas.torch.cxx.built_here`)
  and its FX/AOT cache misses.

Costs are rough figures for a small CPU machine, meant to tell a 10-second header from a
one-second kernel, not to be measured against.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cas import manifest
from cas.digest import ObjectId
from cas.objects import Env
from cas.store import Store

__all__ = ["COST_S", "Rebuild", "Warmth", "combine", "observed", "precompiled", "predict"]

#: Rough seconds of work per item torch rebuilds.
COST_S = {"cpp_pch": 10.0, "cpp_kernel": 1.5, "inductor": 2.0, "aot_autograd": 0.5, "precompile": 2.0}


@dataclass(frozen=True)
class Rebuild:
    """One class of work torch will do (or did): ``count`` items of ``kind``, and why."""

    kind: str
    count: int
    reason: str

    @property
    def seconds(self) -> float:
        return COST_S.get(self.kind, 1.0) * self.count

    def line(self) -> str:
        tool = "g++" if self.kind.startswith("cpp") else "compile"
        cost = f"~{self.seconds:.0f} s" if self.seconds >= 1 else "<1 s"
        return f"{self.reason}: {cost} of {tool}"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "count": self.count, "reason": self.reason,
                "seconds": round(self.seconds, 1), "line": self.line()}


@dataclass
class Warmth:
    """Whether a start is fully warm, and what torch still rebuilds if not."""

    rebuilds: list[Rebuild] = field(default_factory=list)

    @property
    def fully_warm(self) -> bool:
        return not self.rebuilds

    def headline(self) -> str:
        if self.fully_warm:
            return "start: fully warm"
        total = sum(r.seconds for r in self.rebuilds)
        return f"start: not fully warm (~{total:.0f} s of rebuilds)"

    def lines(self) -> list[str]:
        return [self.headline()] + [f"  {r.line()}" for r in self.rebuilds]

    def to_dict(self) -> dict[str, Any]:
        return {"fully_warm": self.fully_warm, "headline": self.headline(),
                "rebuilds": [r.to_dict() for r in self.rebuilds]}


def _plural(n: int, one: str, many: str | None = None) -> str:
    return f"{n} {one if n == 1 else (many or one + 's')}"


def predict(store: Store, root: ObjectId, env: Env, cpu: str,
            tools: dict[str, str] | None = None) -> Warmth:
    """What torch will rebuild on this machine, judged from manifest ``root``.

    ``cpu`` is this CPU's fingerprint, ``tools`` this machine's toolchain
    (:func:`cas.torch.cxx.toolchain`, computed here when None and C++ entries exist).
    """
    variant = f"cpu-{cpu}"
    kernels_here: set[str] = set()
    kernels_elsewhere: set[str] = set()
    pch_here = pch_elsewhere = 0
    other_tools: dict[tuple[str, str], dict[str, int]] = {}
    for ek, entry in manifest.entries(store, root):
        if ek.env != env.id or ek.kind not in ("cpp_kernel", "cpp_pch"):
            continue
        if ek.variant != variant:
            if ek.kind == "cpp_kernel":
                kernels_elsewhere.add(ek.key)
            else:
                pch_elsewhere += 1
            continue
        if "cxx_id" in entry.meta:
            if tools is None:
                from cas.torch.cxx import toolchain

                tools = toolchain()
            if tools and entry.meta["cxx_id"] != tools.get("cxx_id"):
                built = (str(entry.meta.get("cxx", "?")), str(entry.meta.get("cxx_version", "?")))
                per = other_tools.setdefault(built, {})
                per[ek.kind] = per.get(ek.kind, 0) + 1
                continue
        if ek.kind == "cpp_kernel":
            kernels_here.add(ek.key)
        else:
            pch_here += 1
    out = Warmth()
    missing = kernels_elsewhere - kernels_here
    if missing:
        out.rebuilds.append(Rebuild("cpp_kernel", len(missing),
                                    f"{_plural(len(missing), 'C++ kernel')} in the store only for other CPUs"))
    if (kernels_here or missing) and not pch_here:
        where = f" (the store has {_plural(pch_elsewhere, 'header')} for other CPUs)" if pch_elsewhere else ""
        out.rebuilds.append(Rebuild("cpp_pch", 1, f"precompiled header for this CPU not in the store{where}"))
    for (cxx, version), per in sorted(other_tools.items()):
        here = f"{tools.get('cxx', '?')} ({tools.get('cxx_version', '?')})" if tools else "?"
        for kind, n in sorted(per.items()):
            what = _plural(n, "C++ kernel") if kind == "cpp_kernel" else _plural(n, "precompiled header")
            out.rebuilds.append(Rebuild(kind, n, f"{what} built with {cxx} ({version}), here {here}: "
                                                 "torch names C++ files by its compiler, so they miss"))
    return out


def observed(built: list[str], counters: dict[str, dict[str, int]],
             refused: list[str] | None = None) -> Warmth:
    """What a process did rebuild: ``built`` (C++ outputs torch built, by path), its
    cache ``counters`` (torch's ``inductor`` and ``aot_autograd`` groups) and ``refused``,
    why torch refused each precompiled unit it found (it traced that function again)."""
    out = Warmth()
    for reason in refused or []:
        out.rebuilds.append(Rebuild("precompile", 1, f"precompiled unit not used ({reason}), traced"))
    pch = sum(1 for p in built if p.endswith(".gch"))
    kernels = sum(1 for p in built if p.endswith(".so"))
    if pch:
        out.rebuilds.append(Rebuild("cpp_pch", pch, f"{_plural(pch, 'precompiled header')} "
                                                    "for this CPU not in the store, built"))
    if kernels:
        out.rebuilds.append(Rebuild("cpp_kernel", kernels, f"{_plural(kernels, 'C++ kernel')} "
                                                           "not in the store, built"))
    fx = int((counters.get("inductor") or {}).get("fxgraph_cache_miss", 0))
    aot = int((counters.get("aot_autograd") or {}).get("autograd_cache_miss", 0))
    if fx:
        out.rebuilds.append(Rebuild("inductor", fx, f"{_plural(fx, 'FX graph')} not in the store, compiled"))
    if aot:
        out.rebuilds.append(Rebuild("aot_autograd", aot,
                                    f"{_plural(aot, 'AOTAutograd entry', 'AOTAutograd entries')} "
                                    "not in the store, compiled"))
    return out


def precompiled(counters: dict[str, dict[str, int]], refused: list[str]) -> dict[str, int]:
    """How a process started from dynamo's precompiled units: ``loaded`` (found and
    installed: their functions skip tracing where the guards pass) and ``traced``
    (frames dynamo traced all the same: no unit, a refused one, or guards that failed)."""
    cache = counters.get("dynamo_cache") or {}
    found = int(cache.get("dynamo_cache_hit", 0))
    # A unit torch could not read (``dynamo_cache_error``) was never found; the other
    # refusals were found, then not installed.
    not_installed = len(refused) - int(cache.get("dynamo_cache_error", 0))
    return {"loaded": max(found - not_installed, 0),
            "traced": int((counters.get("frames") or {}).get("total", 0))}


def combine(reports: list[dict[str, Any]]) -> Warmth:
    """Several processes' reports (``to_dict`` form) as one: rebuilds of one reason add up."""
    counts: dict[tuple[str, str], int] = {}
    for report in reports:
        for r in report.get("rebuilds", []):
            key = (str(r["kind"]), str(r["reason"]))
            counts[key] = counts.get(key, 0) + int(r["count"])
    return Warmth([Rebuild(kind, n, reason) for (kind, reason), n in counts.items()])
