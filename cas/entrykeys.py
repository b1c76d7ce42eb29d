"""The grammar of entry keys, per kind: what torch's cache key of each kind looks like.

Hydrate turns a key into a path under a cache dir (cas.torch.kinds.path_for), so a key
is a path fragment an attacker may choose: ``../../.bashrc``, ``/etc/x``, ``a/\\0``. Every
key of a kind that hydrate writes must match its kind's grammar, which admits only what
torch itself produces: one, or up to a kind's number of, plain path components (letters,
digits and ``_.,+=@-``, not starting with a dot, at most 255 bytes each).
The grammar is checked where keys enter a store (a commit, a received manifest node)
and again before hydrate writes (docs/format.md, "Entry keys"); a kind cas does not
write into a cache dir has no grammar beyond being text.
"""

from __future__ import annotations

import re

from cas.errors import BadEntryKey

_PART = r"[A-Za-z0-9_][A-Za-z0-9_.,+=@-]{0,254}"


def _parts(most: int) -> str:
    """One to ``most`` plain path components joined by ``/``."""
    return rf"{_PART}(?:/{_PART}){{0,{most - 1}}}"


#: kind -> the whole key, as a regular expression. Shapes as torch makes them (see
#: cas.torch.kinds): ``<xx>/<hash>.best_config`` (autotune), ``<xx>/<name>.so``
#: (cpp_kernel), ``<dev>/<hash>/<file>`` (triton_kernel); one component otherwise.
GRAMMAR: dict[str, re.Pattern[str]] = {
    kind: re.compile(rf"(?:{pattern})\Z")
    for kind, pattern in {
        "inductor": r"[A-Za-z0-9_]{1,3}[A-Za-z0-9_.,+=@-]{0,252}",  # key[1:3] names a dir
        "aot_autograd": _PART,
        "precompile": _PART,
        "gemm_timing": _PART,
        "autotune": _parts(2),
        "cpp_kernel": _parts(2),
        "triton_kernel": _parts(3),
        "cpp_pch": _PART,
        # A file name ``code_state_<key>.pkl``: any text without separators or controls.
        "pgo": r"[^/\\\x00-\x1f\x7f<>:\"|?*]{1,200}",
    }.items()
}


def problem(kind: str, key: str) -> str | None:
    """Why ``key`` is not a valid key of ``kind``, or None if it is."""
    pattern = GRAMMAR.get(kind)
    if pattern is None or pattern.match(key):
        return None
    return f"{kind} key {key[:80]!r} does not match the {kind} key grammar"


def check(kind: str, key: str) -> None:
    """Raise :class:`~cas.errors.BadEntryKey` if ``key`` is not a valid key of ``kind``."""
    why = problem(kind, key)
    if why is not None:
        raise BadEntryKey(why, hint="entry keys are torch's cache keys; this one would write outside the cache dir")
