"""Revoke and audit entries: ``cas revoke KEY|OID -m WHY`` and ``cas blame KEY``."""

from __future__ import annotations

from pathlib import Path

import click
from rich.markup import escape

from cas import blame as audit
from cas import revocations
from cas.errors import UsageError
from cas.refs import load_commit
from cas_cli.context import Context, pass_ctx


def _private_key(path: Path | None) -> bytes | None:
    """A raw Ed25519 private key from a file: 32 bytes, or 64 hex digits."""
    if path is None:
        return None
    data = path.read_bytes().strip()
    try:
        key = bytes.fromhex(data.decode()) if len(data) == 64 else data
    except (UnicodeDecodeError, ValueError):
        key = b""
    if len(key) != 32:
        raise UsageError(f"{path} holds no ed25519 private key", hint="give 32 raw bytes or 64 hex digits")
    return key


_ref_option = click.option("--ref", "refs", multiple=True, metavar="REF",
                           help="Look KEY up in REF (repeatable; default: every branch and tag).")


@click.command()
@click.argument("what", metavar="KEY|OID")
@click.option("-m", "--message", "reason", required=True, help="Why it is revoked.")
@_ref_option
@click.option("--sign-key", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
              help="Sign the revocation with this Ed25519 private key (32 raw bytes or 64 hex digits).")
@pass_ctx
def revoke(ctx: Context, what: str, reason: str, refs: tuple[str, ...], sign_key: Path | None) -> None:
    """Stop an entry reaching torch again, from any ref, here and wherever it is pushed.

    KEY is a torch cache key (as `cas ls` prints it, or 8+ leading characters): every
    blob held under it is revoked. OID is a blob id. The revocation is a commit on the
    branch cas/revocations, carried by push, fetch and clone (docs/sync.md).
    """
    store = ctx.store
    targets = revocations.find_targets(store, what, refs or None)
    oid = revocations.revoke(store, targets, reason, private_key=_private_key(sign_key))
    rows = revocations.revoked_rows(load_commit(store, oid))
    names = [revocations.entry_text(r) for r in rows]
    data = {"commit": oid.hex, "reason": reason.strip(), "signed": sign_key is not None, "revoked": rows}
    text = f"[{revocations.BRANCH} {oid.short()}] revoked {len(rows)}: " + ", ".join(names)
    ctx.emit(data, escape(text))


@click.command()
@click.argument("key")
@_ref_option
@pass_ctx
def blame(ctx: Context, key: str, refs: tuple[str, ...]) -> None:
    """Every commit that added, changed, removed or revoked the entries of KEY.

    KEY is a torch cache key (as `cas ls` prints it, or 8+ leading characters). Each
    line: commit, action, entry, blob, author [producer, machine, token], timings.
    """
    show(ctx, audit.blame(ctx.store, key, refs or None))


def show(ctx: Context, events: list[audit.Event]) -> None:
    """Print blame events (also `cas log --entry`)."""
    ctx.emit([e.to_dict() for e in events], escape("\n".join(e.line() for e in events)))


def register(cli: click.Group) -> None:
    for cmd in (revoke, blame):
        cli.add_command(cmd)
