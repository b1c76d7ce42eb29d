"""Trust: which bytes may reach torch, beside refs and below torch and the server.

Torch unpickles what its caches return, so an entry is code. :mod:`cas.trust.policy`
says which refs may hand their bytes to torch (design invariant 6); it judges a commit
by facts that revocations (:mod:`cas.revocations`) judge by too: trusted remotes
(:mod:`cas.trust.remotes`) and trusted keys and signatures (:mod:`cas.trust.keys`).
Nothing here imports torch: hydrate, the live backend and the Redis door all call the
one rule.
"""

from __future__ import annotations

from cas.trust.keys import add_trusted_key, public_key, sign, trusted_keys, verify
from cas.trust.policy import (
    AllowedCommits,
    Verdict,
    check_object_allowed,
    check_ref_allowed,
    commit_origin,
)
from cas.trust.remotes import describe_untrusted, remote_trusted, set_remote_trusted

__all__ = [
    "AllowedCommits",
    "Verdict",
    "add_trusted_key",
    "check_object_allowed",
    "check_ref_allowed",
    "commit_origin",
    "describe_untrusted",
    "public_key",
    "remote_trusted",
    "set_remote_trusted",
    "sign",
    "trusted_keys",
    "verify",
]
