"""How stored values are shown to people (`cas log`, `cas show`, the /ui pages, the
values handed to torch), in agreement with :mod:`cas.validate`.

Validation refuses what these cannot show (a time outside years 1 to 9999, a compile
time that is not a count of milliseconds); these still show, rather than crash on, what
a store written before those rules may hold.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

from cas.validate import NUMERIC_META

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)


def utc(ts: float, *, seconds: bool = True) -> str:
    """``ts`` (seconds since the epoch) as a UTC date, ``2026-01-31 12:00:00``; a time
    no date can show as ``@<ts>``."""
    try:
        when = _EPOCH + dt.timedelta(seconds=ts)
    except (OverflowError, ValueError, TypeError):
        return f"@{ts}"
    # isoformat, not strftime: strftime writes the year 1 as "1" on glibc
    return when.isoformat(sep=" ")[: 19 if seconds else 16]


def saved_ms(meta: Mapping[str, Any] | None) -> int:
    """The compile time an entry saves, in milliseconds: its first NUMERIC_META value that
    is a count (validate refuses others); 0 when it has none."""
    for name in NUMERIC_META:
        value = (meta or {}).get(name)
        if type(value) is int and value >= 0:
            return value
    return 0
