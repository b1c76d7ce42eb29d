"""One mapping from torch's artifacts to manifest entries, and one commit-metadata schema.

Every front door that records what torch produced (capture, ``cas import-megacache``, the
live backend) files an artifact of ``kind`` under torch's ``key`` the same way, so an
artifact recorded by one is found by the others (docs/format.md, section 10):

* the key is torch's own, except PGO keys, stored as torch names their files
  (:func:`cas.torch.kinds.pgo_key`, idempotent: the wire's keys are sanitized already);
* the variant is :func:`cas.torch.kinds.variant_for` (the CPU for CPU-bound kinds, a hash
  of the guard expressions for guarded ones).

The metadata of a commit they make has the same core fields: ``producer``, ``host``,
``time``, ``env`` (hex) and ``kinds`` (entries added per kind); each producer adds its own
fields after those. Captures made before this schema named the per-kind counts ``counts``;
readers (:mod:`cas.coverage`) accept both.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Iterable, Mapping
from typing import Any

from cas.digest import ObjectId
from cas.objects import EntryKey
from cas.torch.kinds import pgo_key, variant_for

__all__ = ["commit_metadata", "entry_key"]


def entry_key(env: ObjectId, kind: str, key: str, content: bytes, cpu: str) -> tuple[EntryKey, str | None]:
    """The entry key of an artifact (``kind``, torch's ``key``, its bytes ``content``) of
    env ``env`` recorded on CPU ``cpu``, and its guards expression (None: unguarded)."""
    stored = pgo_key(key) if kind == "pgo" else key
    variant, guards = variant_for(kind, content, cpu)
    return EntryKey(env, kind, stored, variant), guards


def _count_kinds(keys: Iterable[EntryKey]) -> dict[str, int]:
    out: dict[str, int] = {}
    for ek in keys:
        out[ek.kind] = out.get(ek.kind, 0) + 1
    return out


def commit_metadata(producer: str, env: ObjectId, keys: Iterable[EntryKey],
                    extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The metadata of a commit of the entries ``keys`` of ``env``: the core fields, then
    ``extra`` (the producer's own fields; a caller's may override a core one, such as
    ``producer``)."""
    return {
        "producer": producer,
        "host": platform.node(),
        "time": int(time.time()),
        "env": env.hex,
        "kinds": _count_kinds(keys),
        **(extra or {}),
    }

