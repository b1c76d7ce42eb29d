"""Bounded reading of what a server answers: every byte a client reads from a stranger
goes through here, so that no answer, however large, endless or malformed, can make
the client hold more than a named limit (invariant 8; limits in docs/sync.md).

Transports hand over an answer as chunks; :func:`read` keeps at most ``limit`` bytes of
them and refuses the rest, :func:`read_head` keeps the first ``limit`` bytes and drops
the rest (error bodies), and :func:`json_answer` parses a bounded body, refusing
non-JSON, nesting past the parser's recursion limit and an answer of the wrong shape
with one line naming the URL and what was asked.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from cas.errors import RemoteError, shown

KiB = 1 << 10
MiB = 1 << 20
#: Largest refs listing read (GET /v1/refs, an S3 remote's refs object): ~70,000 refs.
MAX_REFS = 32 * MiB
#: Largest small JSON answer read (health, a ref update's answer).
MAX_SMALL = 1 * MiB
#: Bytes of an error answer read; the rest is dropped unread, the message cut to a line.
MAX_ERROR = 64 * KiB
#: Characters of a server's message shown in an error line.
MESSAGE_CHARS = 200
#: Largest S3 pack index read (an index entry is 45 bytes: ~1.5 million objects).
MAX_INDEX = 64 * MiB


def read(chunks: Iterable[bytes], limit: int, *, url: str, what: str) -> bytes:
    """The whole answer, or RemoteError as soon as it passes ``limit`` bytes."""
    buf = bytearray()
    for chunk in chunks:
        buf += chunk
        if len(buf) > limit:
            raise too_large(url, what, limit)
    return bytes(buf)


def read_head(chunks: Iterable[bytes], limit: int) -> tuple[bytes, bool]:
    """The first ``limit`` bytes of an answer, and whether that was all of it."""
    buf = bytearray()
    for chunk in chunks:
        buf += chunk
        if len(buf) > limit:
            return bytes(buf[:limit]), False
    return bytes(buf), True


def too_large(url: str, what: str, limit: int) -> RemoteError:
    return RemoteError(
        f"{url}: {what} is over the limit of {limit} bytes; nothing of it was used",
        hint="the server is broken or hostile",
        url=url,
    )


def malformed(url: str, what: str, why: str) -> RemoteError:
    return RemoteError(f"{url}: {what} is malformed: {why}", hint="the server is broken or hostile", url=url)


def json_answer(data: bytes, *, url: str, what: str) -> Any:
    """``data`` parsed as JSON, or one-line RemoteError (never a parser's traceback)."""
    try:
        return json.loads(data)
    except RecursionError as exc:
        raise malformed(url, what, "JSON nested too deep") from exc
    except ValueError as exc:  # UnicodeDecodeError and JSONDecodeError both
        raise malformed(url, what, "not JSON") from exc


def json_object(data: bytes, *, url: str, what: str) -> dict[str, Any]:
    got = json_answer(data, url=url, what=what)
    if not isinstance(got, dict):
        raise malformed(url, what, f"a JSON {type(got).__name__}, not an object")
    return got


def string_map(data: bytes, *, url: str, what: str) -> dict[str, str]:
    """A JSON object whose values are all strings (a refs listing)."""
    got = json_object(data, url=url, what=what)
    for key, value in got.items():
        if not isinstance(value, str):
            raise malformed(url, what, f"the value of {shown(key)} is a JSON {type(value).__name__}")
    return got


def one_line(text: str, chars: int = MESSAGE_CHARS) -> str:
    """A server's message as one line of at most ``chars`` characters."""
    flat = " ".join(text.split())
    return flat if len(flat) <= chars else flat[:chars] + "..."
