"""fsck: re-check a whole store and return what is wrong with it, never printing.

Checks, in one pass over every object and then over the refs:

* the record decodes (type code, flags, sizes) and its payload decompresses to the
  recorded size;
* with ``verify_hashes``, the bytes hash to the id (a chunked blob: the joined chunk
  stream; each chunk is also checked on its own, as an object);
* a structured object decodes, and every object it references is present (closure holds
  for *every* stored object, not only reachable ones: gc keeps whatever a young object
  references, so a violation anywhere is a real defect) and of the type its role wants
  (a commit's manifest a manifest node, its parents commits, a tag's target what the
  tag names, a node's children nodes, an entry's blob a blob and its env an env);
* every ref points at a present commit or tag whose closure is complete;
* objects no ref reaches are listed as ``dangling`` (information, not an error);
* a blob a size-bounded gc evicted (cas.budget) is absent by design: a reference to it
  is counted in ``evicted``, not reported missing.

Findings carry a ``kind``, the ``oid`` concerned (or the ref name) and a one-line message.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from cas import validate
from cas.codec import STRUCTURED, ObjType
from cas.digest import Hasher, ObjectId, verify_id
from cas.errors import CasError
from cas.store import Store

CORRUPT = "corrupt"
MISSING = "missing"
WRONG_TYPE = "wrong-type"
BAD_REF = "bad-ref"
DANGLING = "dangling"
#: Finding kinds that are not errors.
INFO_KINDS = frozenset({DANGLING})

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class Finding:
    """One thing fsck found: what kind, about which object (or ref), and why."""

    kind: str
    oid: ObjectId | None
    message: str
    ref: str | None = None

    @property
    def is_error(self) -> bool:
        return self.kind not in INFO_KINDS

    def __str__(self) -> str:
        return f"{self.kind}: {self.message}"


@dataclass
class FsckReport:
    """The result of :func:`fsck`: counts and findings (errors and information)."""

    objects: int = 0
    refs: int = 0
    reachable: int = 0
    #: Evicted blobs still named by a stored object (absent by design, not errors).
    evicted: int = 0
    findings: list[Finding] = field(default_factory=list)

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.is_error]

    @property
    def dangling(self) -> list[Finding]:
        return [f for f in self.findings if f.kind == DANGLING]

    @property
    def checked(self) -> int:
        """Objects examined (same as ``objects``)."""
        return self.objects

    @property
    def ok(self) -> bool:
        """True when nothing but information was found."""
        return not self.errors

    def to_dict(self) -> dict[str, object]:
        return {
            "ok": self.ok,
            "objects": self.objects,
            "refs": self.refs,
            "reachable": self.reachable,
            "evicted": self.evicted,
            "findings": [
                {"kind": f.kind, "oid": str(f.oid) if f.oid else None, "ref": f.ref,
                 "message": f.message}
                for f in self.findings
            ],
        }


def fsck(
    store: Store, *, verify_hashes: bool = True, progress: Progress | None = None
) -> FsckReport:
    """Check ``store`` and return a report; never raises for what it finds."""
    return _Checker(store, verify_hashes).run(progress)


class _Checker:
    def __init__(self, store: Store, verify: bool) -> None:
        self.store = store
        self.verify = verify
        self.report = FsckReport()
        # id -> what it references (structured objects and chunked blobs only)
        self.links: dict[ObjectId, list[validate.Link]] = {}
        self.types: dict[ObjectId, ObjType] = {}
        self.damaged: set[ObjectId] = set()
        self.evicted = store.maintenance.evicted_ids()

    def add(self, kind: str, oid: ObjectId | None, message: str, ref: str | None = None) -> None:
        self.report.findings.append(Finding(kind, oid, message, ref))

    def run(self, progress: Progress | None) -> FsckReport:
        total = self.store.info()["objects"]
        for oid in self.store.objects.iter_ids():
            self.report.objects += 1
            self.check_object(oid)
            if progress:
                progress(self.report.objects, max(total, self.report.objects))
        self.check_closure()
        reachable = self.check_refs()
        self.report.reachable = len(reachable)
        for oid, otype in self.types.items():
            if oid not in reachable:
                self.add(DANGLING, oid, f"{otype.label} {oid.short()} is not reachable from any ref")
        return self.report

    def check_object(self, oid: ObjectId) -> None:
        try:
            got = self.store.objects.examine(oid)
            if got is None:  # deleted by a concurrent gc since the id was listed
                return
            rec, body = got
            if isinstance(body, list):  # a chunked blob: its chunk ids
                self.links[oid] = [validate.Link(c, _CHUNKS, "chunk") for c in body]
                if self.verify:
                    _verify_chunked(self.store, oid, rec.raw_size, body)
            else:
                if self.verify:
                    verify_id(oid, ObjectId.of(body), what=rec.type.label)
                if rec.type in STRUCTURED:
                    refs = validate.check(rec.type, body)
                    if refs:
                        self.links[oid] = refs
            self.types[oid] = rec.type
        except _MissingChunk as exc:
            self.damaged.add(oid)
            self.add(MISSING, exc.chunk, str(exc))
        except CasError as exc:
            self.damaged.add(oid)
            self.add(CORRUPT, oid, _one_line(exc, oid))

    def present(self, oid: ObjectId) -> bool:
        return oid in self.types or oid in self.damaged

    def check_closure(self) -> None:
        # A chunk may already have been reported missing by the hash check of its blob.
        seen = {f.oid for f in self.report.findings if f.kind == MISSING and f.oid}
        named: set[ObjectId] = set()
        for oid, links in self.links.items():
            for link in links:
                ref = link.oid
                self.check_type(oid, link)
                if self.present(ref) or ref in seen:
                    continue
                if ref in self.evicted and self.types.get(oid) is ObjType.NODE:
                    named.add(ref)
                    continue
                if self.store.objects.has(ref):  # written after the listing passed its id
                    continue
                seen.add(ref)
                self.add(MISSING, ref, f"object {ref.short()} referenced by {oid.short()} is missing")
        self.report.evicted = len(named)

    def check_type(self, oid: ObjectId, link: validate.Link) -> None:
        actual = self.types.get(link.oid)
        if actual is not None and actual not in link.types:
            expected = " or ".join(sorted(t.label for t in link.types))
            self.add(
                WRONG_TYPE,
                oid,
                f"{_label(self.types.get(oid))} {oid.short()} names {link.oid.short()} as its {link.role}, "
                f"but that is a {actual.label}, not a {expected}",
            )

    def check_refs(self) -> set[ObjectId]:
        reachable: set[ObjectId] = set()
        # With nothing damaged anywhere, one shared walk suffices; otherwise each ref walks
        # on its own so that every ref whose closure is broken gets named.
        shared = not self.report.errors
        refs = self.store.refs.as_dict("")
        self.report.refs = len(refs)
        for name, target in sorted(refs.items()):
            if not self.present(target) and not self.store.objects.has(target):
                self.add(BAD_REF, target, f"ref {name} points at missing object {target.short()}", name)
                continue
            otype = self.types.get(target)
            if otype is not None and otype not in (ObjType.COMMIT, ObjType.TAG):
                self.add(BAD_REF, target, f"ref {name} points at a {otype.label}, not a commit or tag", name)
            visited = reachable if shared else set()
            broken = self.walk(target, visited)
            reachable |= visited
            if broken:
                self.add(
                    BAD_REF,
                    target,
                    f"ref {name} points at {target.short()} whose closure has {broken} missing or damaged object(s)",
                    name,
                )
        return reachable

    def walk(self, root: ObjectId, reachable: set[ObjectId]) -> int:
        """Mark what ``root`` reaches into ``reachable``; count what is missing or damaged."""
        broken: set[ObjectId] = set()
        stack = [root]
        while stack:
            oid = stack.pop()
            if oid in reachable or oid in broken:
                continue
            if oid not in self.types:
                if oid not in self.evicted:
                    broken.add(oid)
                continue
            reachable.add(oid)
            stack.extend(link.oid for link in self.links.get(oid, ()))
        return len(broken)


#: A chunk's bytes may already be stored as a small blob of the same content (a put of
#: existing content is a no-op), so a chunk link accepts either.
_CHUNKS = frozenset({ObjType.CHUNK, ObjType.BLOB})


def _label(otype: ObjType | None) -> str:
    return otype.label if otype is not None else "object"


class _MissingChunk(CasError):
    def __init__(self, blob: ObjectId, chunk: ObjectId) -> None:
        super().__init__(f"chunk {chunk.short()} of blob {blob.short()} is missing")
        self.chunk = chunk


def _verify_chunked(store: Store, oid: ObjectId, size: int, chunks: list[ObjectId]) -> None:
    whole = Hasher()
    for cid in chunks:
        data = store.objects.get(cid)
        if data is None:
            raise _MissingChunk(oid, cid)
        whole.update(data)
    if whole.size != size:
        raise CasError(f"blob {oid.short()}: chunks join to {whole.size} bytes, record says {size}")
    verify_id(oid, whole.digest(), what="blob")


def _one_line(exc: CasError, oid: ObjectId) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text if oid.short() in text else f"object {oid.short()}: {text}"


__all__ = ["BAD_REF", "CORRUPT", "DANGLING", "MISSING", "WRONG_TYPE", "Finding", "FsckReport", "fsck"]
