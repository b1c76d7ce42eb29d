"""What a transfer reports: figures, ref updates, and the progress callback type."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from cas.digest import ObjectId
from cas.refs import HEADS, REMOTES, TAGS

#: (phase, objects done, bytes done, objects in all, bytes in all); totals 0 if unknown.
ProgressFn = Callable[[str, int, int, int, int], None]


@dataclass
class Stats:
    """What a transfer moved: objects, their raw bytes, bytes on the wire, time taken."""

    objects: int = 0
    bytes: int = 0
    wire_bytes: int = 0
    seconds: float = 0.0

    @property
    def rate(self) -> float:
        """Raw bytes per second (0 for an instant transfer)."""
        return self.bytes / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, float | int]:
        return {
            "objects": self.objects,
            "bytes": self.bytes,
            "wire_bytes": self.wire_bytes,
            "seconds": round(self.seconds, 3),
            "bytes_per_second": round(self.rate),
        }


@dataclass
class RefUpdate:
    """One ref a transfer looked at; ``status``: new, fast-forward, forced, up-to-date,
    deleted, partial, or rejected (with ``note`` saying why)."""

    ref: str
    old: ObjectId | None
    new: ObjectId | None
    status: str
    note: str = ""

    def to_dict(self) -> dict[str, str | None]:
        return {
            "ref": self.ref,
            "old": str(self.old) if self.old else None,
            "new": str(self.new) if self.new else None,
            "status": self.status,
            "note": self.note,
        }


@dataclass
class Result:
    """The outcome of a push or fetch: ref updates and transfer figures.

    ``tips`` maps each remote ref (``refs/heads/x``) to the local commit that now stands
    for it: the remote's own id, or for a partial fetch the local partial commit.
    """

    updates: list[RefUpdate] = field(default_factory=list)
    stats: Stats = field(default_factory=Stats)
    tips: dict[str, ObjectId] = field(default_factory=dict)

    def to_dict(self) -> dict[str, object]:
        return {
            "updates": [u.to_dict() for u in self.updates],
            **self.stats.to_dict(),
        }


def tracking_ref(remote_name: str, remote_ref: str) -> str:
    """The local ref that records ``remote_ref`` of remote ``remote_name``."""
    if remote_ref.startswith(HEADS):
        return f"{REMOTES}{remote_name}/{remote_ref[len(HEADS):]}"
    return f"{REMOTES}{remote_name}/tags/{remote_ref[len(TAGS):]}"
