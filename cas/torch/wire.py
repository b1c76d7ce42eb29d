"""torch's remote-cache wire shape, as the live backend and the Redis door see it.

* key ``pt2:<cache_id>::<key>:c1``; ``cache_id`` names the cache (``fx-graph-v1``,
  ``autograd-experimental``, ``dynamo-pgo``), or for autotune is a per-kernel-set hash;
  Triton's own remote cache uses ``triton:<kernel hash>:<file name>``;
* value JSON bytes: ``{"data": base64(pickle), "time_taken_ms": n}`` for FX, AOT and PGO;
  the best-config dict itself for autotune; the file's bytes for Triton.

:func:`parse_backend_key` maps a key to (kind, store key, cache id); :func:`wrap` and
:func:`unwrap` convert between the wire value and the stored blob.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

try:  # SIMD base64, far faster than the standard library's decode (docs/dependencies.md)
    import pybase64 as _fast64
except ImportError:  # a platform without its wheel: the same results, slower
    _fast64 = base64  # type: ignore[misc,no-redef]

from cas.objects import Entry
from cas.torch.kinds import pgo_key

__all__ = ["AUTOTUNE_REMOTE", "LIVE_KINDS", "TRITON_REMOTE", "parse_backend_key", "unwrap", "wrap"]

#: Kind of remote autotune entries (their keys differ from the local .best_config paths).
AUTOTUNE_REMOTE = "autotune_remote"
#: Kind of Triton's own remote-cache files (``triton.runtime.cache.RedisRemoteCacheBackend``:
#: key ``triton:<kernel hash>:<file name>``, value the file's bytes; older Tritons used the
#: prefixes ``inductor:`` and ``pt2:``).
TRITON_REMOTE = "triton_remote"
_TRITON_PREFIXES = ("triton:", "inductor:", "pt2:")

#: torch's cache ids → our kinds. Any other cache id is a per-kernel autotune cache.
_KIND_BY_CACHE_ID = {
    "fx-graph-v1": "inductor",
    "autograd-experimental": "aot_autograd",
    "dynamo-pgo": "pgo",
}
#: Never served or recorded: its backend hash needs Triton, and it crashes without it.
_IGNORED_CACHE_IDS = frozenset({"bundled-autotune-v1"})
#: Kinds whose wire value is ``{"data": base64(pickle), ...}``.
_WRAPPED_KINDS = frozenset({"inductor", "aot_autograd", "pgo"})
LIVE_KINDS = frozenset({*_WRAPPED_KINDS, AUTOTUNE_REMOTE, TRITON_REMOTE})

def parse_backend_key(backend_key: str) -> tuple[str, str, str] | None:
    """Split ``pt2:<cache_id>::<key>:c1`` into ``(kind, store key, cache_id)``.

    Triton's keys, ``triton:<kernel hash>:<file>`` (older: ``inductor:``, ``pt2:``), give
    ``(TRITON_REMOTE, "<kernel hash>/<file>", "triton")``. Returns None for keys cas does
    not handle (unknown shape, bundled autotune).
    """
    if not backend_key.startswith("pt2:"):
        return _parse_triton_key(backend_key)
    body = backend_key[4:]
    body, sep, _version = body.rpartition(":c")
    if not sep or "::" not in body:
        return _parse_triton_key(backend_key)
    cache_id, sep, key = body.partition("::")
    if not sep or not cache_id or not key or cache_id in _IGNORED_CACHE_IDS:
        return None
    kind = _KIND_BY_CACHE_ID.get(cache_id)
    if kind == "pgo":
        return kind, pgo_key(key), cache_id  # capture stores PGO keys as file names
    if kind is not None:
        return kind, key, cache_id
    # Autotune: one cache id per kernel config set, so it stays part of our key.
    return AUTOTUNE_REMOTE, f"{cache_id}::{key}", cache_id


def _parse_triton_key(backend_key: str) -> tuple[str, str, str] | None:
    for prefix in _TRITON_PREFIXES:
        if backend_key.startswith(prefix):
            kernel, sep, name = backend_key[len(prefix) :].partition(":")
            if sep and kernel and name and "/" not in kernel and "/" not in name:
                return TRITON_REMOTE, f"{kernel}/{name}", "triton"
    return None


def wrap(kind: str, data: bytes, entry: Entry) -> bytes:
    """A stored blob as torch's remote cache hands it over (``{"data": base64, ...}`` JSON
    for FX, AOT and PGO; autotune and Triton values as they are)."""
    if kind not in _WRAPPED_KINDS:
        return data
    value: dict[str, Any] = {"data": _fast64.b64encode(data).decode("ascii")}
    if kind != "pgo":
        value["time_taken_ms"] = int(entry.meta.get("time_taken_ms", 0) or 0)
    return json.dumps(value).encode("ascii")


def unwrap(kind: str, value: bytes) -> tuple[bytes, dict[str, Any]]:
    """A remote-cache value as (blob to store, entry metadata); ValueError when it has
    not the shape of ``kind``."""
    if kind == TRITON_REMOTE:
        return bytes(value), {}  # Triton's kernel files, kept as they are
    if kind not in _WRAPPED_KINDS:
        json.loads(value)  # autotune records are JSON; refuse anything else
        return bytes(value), {}
    doc, data = _wrapper(value)
    try:
        blob = _b64decode(data if data is not None else doc["data"])
    except (KeyError, TypeError, binascii.Error) as exc:
        raise ValueError(f"unexpected {kind} cache value") from exc
    meta: dict[str, Any] = {}
    if "time_taken_ms" in doc:
        meta["time_taken_ms"] = int(doc["time_taken_ms"])
    return blob, meta


#: How torch's json.dumps begins a wrapped value.
_DATA = b'{"data": "'


def _wrapper(value: bytes) -> tuple[Any, bytes | None]:
    """``json.loads(value)``, and the bytes of its ``"data"`` string when they were read
    without it (None: take ``doc["data"]``).

    A wrapped value is nearly all base64, and a JSON pass over it (decoding it to text,
    then scanning the text) cost a Redis door commit more than the rest of a 100 KiB SET.
    When the value begins as torch writes it, the data string holds no escape and the
    rest names no other ``data`` and escapes nothing, the rest is parsed with an empty
    string in the data's place: every other field reads as json.loads reads it, and the
    data's characters are its bytes. A data string that is not strict base64 is refused
    by the decode either way (a ValueError, as json.loads's own errors are); any other
    shape is left to json.loads.
    """
    if isinstance(value, bytes) and value.startswith(_DATA):
        end = value.find(b'"', len(_DATA))
        if end > 0 and value.find(b"\\", len(_DATA), end) < 0:
            tail = value[end + 1:]
            if b"\\" not in tail and b"data" not in tail:
                try:
                    return json.loads(b'{"data": ""' + tail), value[len(_DATA):end]
                except ValueError:
                    pass  # json.loads(value) says what is wrong
    return json.loads(value), None


def _b64decode(data: str | bytes) -> bytes:
    """``base64.b64decode(data, validate=True)``, read by pybase64 where it can. pybase64
    refuses some paddings the standard library accepts (``"/AAAAAAA="``: a ``=`` past
    the last quantum), so what it refuses is read again by the standard library, which
    decides: values are read exactly as they were before pybase64."""
    try:
        return _fast64.b64decode(data, validate=True)
    except binascii.Error:
        return base64.b64decode(data, validate=True)
