"""Trusted keys: the Ed25519 public keys whose signatures make a tag or a revocation
trusted, kept in the meta key ``trust.keys``, and signing and checking with them.

Signatures need the ``cryptography`` package; without it no signature verifies (fail
closed).
"""

from __future__ import annotations

import json

from cas.errors import PolicyError
from cas.store import Store

__all__ = ["add_trusted_key", "public_key", "sign", "trusted_keys", "verify"]

_KEYS_META = "trust.keys"


def trusted_keys(store: Store) -> list[bytes]:
    raw = store.meta.get(_KEYS_META)
    return [bytes.fromhex(k) for k in json.loads(raw)] if raw else []


def add_trusted_key(store: Store, public: bytes) -> None:
    """Trust signatures made with the Ed25519 key whose 32-byte public half is given."""
    if len(public) != 32:
        raise PolicyError("an ed25519 public key is 32 bytes")
    keys = {k.hex() for k in trusted_keys(store)} | {public.hex()}
    store.meta.set(_KEYS_META, json.dumps(sorted(keys)))


def sign(private_key: bytes, payload: bytes) -> bytes:
    """Sign ``payload`` with a raw 32-byte Ed25519 private key (needs ``cryptography``)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    return Ed25519PrivateKey.from_private_bytes(private_key).sign(payload)


def public_key(private_key: bytes) -> bytes:
    """The raw 32-byte public half of a raw Ed25519 private key."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    key = Ed25519PrivateKey.from_private_bytes(private_key)
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def verify(payload: bytes, signature: bytes, keys: list[bytes]) -> bool:
    """True if one of ``keys`` signed ``payload``; False without ``cryptography``."""
    try:
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    except ImportError:
        return False
    for key in keys:
        try:
            Ed25519PublicKey.from_public_bytes(key).verify(signature, payload)
            return True
        except (InvalidSignature, ValueError):
            continue
    return False
