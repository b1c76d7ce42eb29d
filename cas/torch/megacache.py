"""Torch's Mega-Cache container, decoded and encoded without importing torch.

``torch.compiler.save_cache_artifacts()`` returns bytes in the format of
``torch/utils/_appending_byte_serializer.py`` (encoding version 1)::

    [0:4]   crc32(data[4:]), big-endian
    [4:12]  uint64 BE encoding version (1)
    blocks until EOF, one per artifact type:
        uint64 len + base64(utf8(type))
        uint64 count
        count x { uint64 len + base64(utf8(key)) ; uint64 len + raw content }

Splitting it here (rather than through torch) lets ``cas import-megacache`` store one
entry per artifact and lets export rebuild a container from any subset of entries, with
nothing unpickled on the way.
"""

from __future__ import annotations

import base64
import binascii
import struct
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cas.errors import CorruptObject

if TYPE_CHECKING:
    from cas.objects import Env
    from cas.store import Store
    from cas.torch.capture import CaptureResult

__all__ = [
    "ENCODING_VERSION",
    "MEGACACHE_KINDS",
    "Artifact",
    "decode",
    "encode",
    "export_megacache",
    "import_megacache",
]

ENCODING_VERSION = 1
#: The artifact types torch 2.13 registers (``CacheArtifactFactory``).
MEGACACHE_KINDS = ("inductor", "aot_autograd", "autotune", "pgo", "precompile")

_U64 = struct.Struct(">Q")


@dataclass(frozen=True)
class Artifact:
    """One Mega-Cache artifact: its type, torch's key, and the raw content."""

    kind: str
    key: str
    content: bytes


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 4

    def done(self) -> bool:
        return self.pos == len(self.data)

    def u64(self) -> int:
        if self.pos + 8 > len(self.data):
            raise CorruptObject("mega-cache container is truncated")
        (value,) = _U64.unpack_from(self.data, self.pos)
        self.pos += 8
        return int(value)

    def raw(self) -> bytes:
        size = self.u64()
        if self.pos + size > len(self.data):
            raise CorruptObject("mega-cache container is truncated")
        out = self.data[self.pos : self.pos + size]
        self.pos += size
        return out

    def text(self) -> str:
        try:
            return base64.b64decode(self.raw(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError) as exc:
            raise CorruptObject(f"mega-cache container has a malformed name: {exc}") from exc


def decode(data: bytes) -> list[Artifact]:
    """Split a Mega-Cache container into its artifacts, checking its CRC and version.

    Raises :class:`CorruptObject` for anything that is not a well-formed container.
    """
    data = bytes(data)
    if len(data) < 12:
        raise CorruptObject("not a mega-cache file: too short")
    if zlib.crc32(data[4:]).to_bytes(4, "big") != data[:4]:
        raise CorruptObject("not a mega-cache file: checksum does not match")
    reader = _Reader(data)
    version = reader.u64()
    if version != ENCODING_VERSION:
        raise CorruptObject(f"mega-cache encoding version {version} is not supported")
    out: list[Artifact] = []
    while not reader.done():
        kind = reader.text()
        for _ in range(reader.u64()):
            key = reader.text()
            out.append(Artifact(kind, key, reader.raw()))
    return out


def _text(s: str) -> bytes:
    payload = base64.b64encode(s.encode("utf-8"))
    return _U64.pack(len(payload)) + payload


def encode(artifacts: Iterable[Artifact]) -> bytes:
    """Build a container ``torch.compiler.load_cache_artifacts`` accepts.

    Artifacts are grouped by kind, in the order kinds first appear.
    """
    groups: dict[str, list[Artifact]] = {}
    for a in artifacts:
        groups.setdefault(a.kind, []).append(a)
    body = bytearray(_U64.pack(ENCODING_VERSION))
    for kind, items in groups.items():
        body += _text(kind)
        body += _U64.pack(len(items))
        for a in items:
            body += _text(a.key)
            body += _U64.pack(len(a.content))
            body += a.content
    return zlib.crc32(body).to_bytes(4, "big") + bytes(body)


# --- store side: import a container as entries, export entries as a container -------------
# (imports inside the functions: the codec above must stay free of store and torch)


def import_megacache(
    store: Store,
    data: bytes,
    *,
    branch: str = "main",
    message: str = "import mega-cache",
    env: Env | None = None,
) -> CaptureResult:
    """Split a ``save_cache_artifacts()`` container into entries of ``env`` (default:
    this process's) and commit them on ``branch``.

    The container carries no env of its own, so it is filed under the env of the process
    importing it: import on the machine (and torch build) that produced it.
    """
    from cas.torch.capture import commit_artifacts

    arts = [a for a in decode(data) if a.kind in MEGACACHE_KINDS]
    return commit_artifacts(
        store,
        arts,
        branch=branch,
        message=message,
        metadata={"producer": "import-megacache", "artifacts": len(arts)},
        env=env,
    )


def export_megacache(store: Store, ref: str, *, env: Env | None = None) -> tuple[bytes, dict[str, int]]:
    """The Mega-Cache container of the entries of ``ref`` that match ``env`` (default:
    this process's), and the count per kind. Entries of other envs are never exported,
    and every blob is hash-checked first.
    """
    from cas import manifest
    from cas.digest import ObjectId
    from cas.refs import load_commit, resolve
    from cas.torch.env import current_env

    env_id = (env or current_env()).id
    root = load_commit(store, resolve(store, ref)).manifest
    arts: list[Artifact] = []
    counts: dict[str, int] = {}
    for ek, entry in manifest.entries(store, root):
        if ek.env != env_id or ek.kind not in MEGACACHE_KINDS:
            continue
        content = store.get(entry.blob)
        if content is None or ObjectId.of(content) != entry.blob:
            raise CorruptObject(f"blob of {ek} is missing or corrupt", oid=entry.blob)
        arts.append(Artifact(ek.kind, ek.key, content))
        counts[ek.kind] = counts.get(ek.kind, 0) + 1
    return encode(arts), counts
