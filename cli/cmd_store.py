"""Store commands: init, put, cat, ls, log, show, diff, branch, tag, refs, fsck, gc, stats."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from cas import budget as budgets
from cas import display, history, manifest, refs, revocations
from cas.budget import DEFAULT_KEEP_COMMITS, Budget
from cas.codec import ObjType
from cas.digest import ObjectId, verify_id
from cas.errors import ObjectNotFound, UsageError
from cas.objects import Commit, Entry, EntryKey, Tag, decode_object
from cas.stats import GcPreview, human_size
from cas.store import Store
from cas_cli.context import Context, pass_ctx

if TYPE_CHECKING:
    from rich.progress import Progress

# rich is imported where a command draws with it (a table, a bar, marked-up text), not
# with the module: `cas branch`, `cas refs`, `cas tag` and the rest start ~30 ms sooner.


def _when(ts: float) -> str:
    return display.utc(ts) + " UTC"


def _entry_json(key: EntryKey, e: Entry) -> dict[str, Any]:
    return {
        "env": key.env.hex,
        "kind": key.kind,
        "key": key.key,
        "variant": key.variant,
        "blob": e.blob.hex,
        "size": e.size,
        "guards": e.guards,
        "meta": dict(e.meta),
    }


def _commit_json(oid: ObjectId, c: Commit) -> dict[str, Any]:
    return {
        "id": oid.hex,
        "manifest": c.manifest.hex,
        "parents": [p.hex for p in c.parents],
        "author": c.author,
        "time": c.time,
        "message": c.message,
        "metadata": dict(c.metadata),
    }


def _progress(ctx: Context, label: str, total: int | None, *, transfer: bool = False) -> Progress:
    from rich.progress import BarColumn, Progress, TextColumn, TransferSpeedColumn

    cols: list[Any] = [TextColumn(f"{label}"), BarColumn(), TextColumn("{task.completed}/{task.total}")]
    if transfer:
        cols.append(TransferSpeedColumn())
    return Progress(*cols, console=ctx.err, transient=True, disable=ctx.quiet or ctx.as_json)


@click.command()
@click.argument("path", required=False, type=click.Path(file_okay=False, path_type=Path))
@pass_ctx
def init(ctx: Context, path: Path | None) -> None:
    """Create an empty store at PATH (default: --store, $CAS_DIR or ~/.cache/cas)."""
    target = path or ctx.store_path
    existed = (target / "data.mdb").exists()
    with Store.init(target) as store:
        manifest.build(store, [])  # every store holds the empty manifest
    verb = "Reinitialized existing" if existed else "Initialized empty"
    ctx.emit({"path": str(target), "created": not existed}, f"{verb} cas store in {target}")


@click.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, allow_dash=True))
@pass_ctx
def put(ctx: Context, files: tuple[str, ...]) -> None:
    """Store FILES as blobs and print their ids (agree with `b3sum`). `-` reads stdin."""
    out = []
    total = sum(Path(f).stat().st_size for f in files if f != "-")
    with _progress(ctx, "put", total, transfer=True) as bar:
        task = bar.add_task("put", total=total)
        for f in files:
            if f == "-":
                oid = ctx.store.objects.put_stream(sys.stdin.buffer)
            else:
                oid = ctx.store.objects.put_file(f, progress=lambda n: bar.advance(task, n))
            out.append({"file": f, "id": oid.hex})
    ctx.emit(out, "\n".join(f"{o['id']}  {o['file']}" for o in out))


@click.command()
@click.argument("obj")
@click.option("-o", "--output", type=click.Path(dir_okay=False, writable=True), help="Write to a file.")
@pass_ctx
def cat(ctx: Context, obj: str, output: str | None) -> None:
    """Write the raw bytes of OBJ (an id, prefix or ref) to stdout, verified."""
    store = ctx.store
    oid = refs.resolve_object(store, obj)
    rec = store.objects.record(oid)
    if rec is None:
        raise ObjectNotFound(f"object {oid} not found", oid=oid)
    from cas.digest import Hasher

    h = Hasher()
    sink = open(output, "wb") if output else sys.stdout.buffer
    try:
        for chunk in store.objects.iter_blob(oid):
            h.update(chunk)
            sink.write(chunk)
    finally:
        if output:
            sink.close()
        else:
            sink.flush()
    verify_id(oid, h.digest())


@click.command(name="ls")
@click.argument("rev", required=False, default="HEAD")
@click.option("--kind", help="Only entries of this kind.")
@click.option("--env", "env_prefix", help="Only entries whose env id starts with this.")
@pass_ctx
def ls_(ctx: Context, rev: str, kind: str | None, env_prefix: str | None) -> None:
    """List the manifest entries of REV (default: HEAD)."""
    from rich.markup import escape
    from rich.table import Table

    store = ctx.store
    c = refs.load_commit(store, refs.resolve(store, rev))
    rows = [
        (k, e)
        for k, e in manifest.entries(store, c.manifest)
        if (kind is None or k.kind == kind) and (env_prefix is None or k.env.hex.startswith(env_prefix))
    ]
    if ctx.as_json:
        ctx.emit([_entry_json(k, e) for k, e in rows])
        return
    table = Table(box=None, pad_edge=False)
    for col in ("env", "kind", "key", "variant", "size", "blob"):
        table.add_column(col, justify="right" if col == "size" else "left")
    for k, e in rows:
        cells = (k.env.short(8), k.kind, k.key, k.variant, human_size(e.size), e.blob.short())
        table.add_row(*map(escape, cells))
    ctx.out.print(table)
    ctx.info(f"{len(rows)} entries")


@click.command()
@click.argument("rev", required=False, default="HEAD")
@click.option("-n", "--max-count", type=int, default=None, help="Show at most N commits.")
@click.option("--oneline", is_flag=True, help="One line per commit.")
@click.option("--entry", default=None, metavar="KEY", help="Only the commits that changed or revoked KEY (cas blame).")
@pass_ctx
def log(ctx: Context, rev: str, max_count: int | None, oneline: bool, entry: str | None) -> None:
    """Show the commits reachable from REV, newest first."""
    from rich.markup import escape

    store = ctx.store
    if entry is not None:
        from cas.blame import blame
        from cas_cli.cmd_revoke import show as show_events

        show_events(ctx, blame(store, entry, [rev])[:max_count])
        return
    items = list(history.log(store, refs.resolve(store, rev), limit=max_count))
    if ctx.as_json:
        ctx.emit([_commit_json(o, c) for o, c in items])
        return
    for oid, c in items:
        first = c.message.splitlines()[0] if c.message else ""
        if oneline:
            ctx.out.print(f"[yellow]{oid.short()}[/] {escape(first)}", markup=True)
            continue
        ctx.out.print(f"[yellow]commit {oid.hex}[/]", markup=True)
        if len(c.parents) > 1:
            ctx.out.print("Merge:  " + " ".join(p.short() for p in c.parents))
        ctx.out.print(f"Author: {c.author}\nDate:   {_when(c.time)}\n", markup=False)
        for line in c.message.splitlines() or [""]:
            ctx.out.print(f"    {line}", markup=False)
        for row in revocations.revoked_rows(c):  # a revocation: say what, signed or not
            signed = " (signed)" if "signature" in c.metadata else ""
            ctx.out.print(f"    revoked {revocations.entry_text(row)} blob {row['blob'][:12]}{signed}", markup=False)
        ctx.out.print("")


@click.command()
@click.argument("obj", default="HEAD")
@pass_ctx
def show(ctx: Context, obj: str) -> None:
    """Describe an object: commit, tag, manifest node, env or blob."""
    store = ctx.store
    oid = refs.resolve_object(store, obj)
    otype, data = store.objects.require(oid, verify=True)  # show what is on disk only if it is intact
    rec = store.objects.record(oid)
    base: dict[str, Any] = {"id": oid.hex, "type": otype.label, "size": len(data)}
    if rec is not None:
        base["stored_size"] = rec.stored_size
    if otype in (ObjType.BLOB, ObjType.CHUNK):
        ctx.emit(base, f"{otype.label} {oid.hex}\nsize: {human_size(len(data))} (stored {human_size(base.get('stored_size', 0))})")
        return
    o = decode_object(otype, data)
    if isinstance(o, Commit):
        info = _commit_json(oid, o) | {"type": "commit", "entries": manifest.count(store, o.manifest)}
        text = (
            f"commit {oid.hex}\nmanifest {o.manifest.hex} ({info['entries']} entries)\n"
            + "".join(f"parent {p.hex}\n" for p in o.parents)
            + f"author {o.author}\ndate   {_when(o.time)}\n"
            + "".join(f"meta   {k}: {v}\n" for k, v in sorted(o.metadata.items()))
            + f"\n    {o.message}"
        )
    elif isinstance(o, Tag):
        info = base | {"target": o.target.hex, "target_type": o.target_type.label, "name": o.name,
                       "tagger": o.tagger, "time": o.time, "message": o.message, "signed": o.signature is not None}
        text = (f"tag {o.name}\ntarget {o.target.hex} ({o.target_type.label})\ntagger {o.tagger}\n"
                f"date   {_when(o.time)}\nsigned {'yes' if o.signature else 'no'}\n\n    {o.message}")
    elif otype == ObjType.ENV:
        info = base | {"fields": dict(o.fields)}  # type: ignore[union-attr]
        text = f"env {oid.hex}\n" + "".join(f"  {k}: {v}\n" for k, v in sorted(o.fields.items()))  # type: ignore[union-attr]
    else:
        node = o
        info = base | {"depth": node.depth, "count": node.count, "leaf": node.is_leaf,  # type: ignore[union-attr]
                       "children": len(node.children), "entries": len(node.entries)}  # type: ignore[union-attr]
        text = "\n".join(f"{k}: {v}" for k, v in info.items())
    ctx.emit(info, text)


@click.command()
@click.argument("a")
@click.argument("b")
@click.option("--stat", is_flag=True, help="Only counts by kind.")
@pass_ctx
def diff(ctx: Context, a: str, b: str, stat: bool) -> None:
    """Show entries added (+), removed (-) and changed (~) from A to B."""
    from rich.markup import escape

    store = ctx.store
    ma = refs.load_commit(store, refs.resolve(store, a)).manifest
    mb = refs.load_commit(store, refs.resolve(store, b)).manifest
    changes = list(manifest.diff(store, ma, mb))
    rows = []
    for ch in changes:
        op = "+" if ch.old is None else "-" if ch.new is None else "~"
        rows.append((op, ch.key, ch.old, ch.new))
    if ctx.as_json:
        ctx.emit([{"op": op, **_entry_json(k, new or old), "old_blob": old.blob.hex if old else None}  # type: ignore[arg-type]
                  for op, k, old, new in rows])
        return
    if stat:
        counts: dict[tuple[str, str], int] = {}
        for op, k, _, _ in rows:
            counts[(k.kind, op)] = counts.get((k.kind, op), 0) + 1
        for (kind, op), n in sorted(counts.items()):
            ctx.out.print(f"{op} {n:6d} {kind}", markup=False)
    else:
        for op, k, old, new in rows:
            color = {"+": "green", "-": "red", "~": "yellow"}[op]
            size = (new or old).size  # type: ignore[union-attr]
            ctx.out.print(f"[{color}]{op} {escape(str(k))}[/] ({human_size(size)})", markup=True)
    ctx.info(f"{len(rows)} changed entries")


@click.command()
@click.argument("name", required=False)
@click.argument("start", required=False)
@click.option("-d", "--delete", "delete", is_flag=True, help="Delete branch NAME.")
@click.option("-f", "--force", is_flag=True, help="Move an existing branch to START.")
@pass_ctx
def branch(ctx: Context, name: str | None, start: str | None, delete: bool, force: bool) -> None:
    """List branches, create NAME at START (default HEAD), or delete one."""
    store = ctx.store
    if name is None:
        heads = store.refs.as_dict(refs.HEADS)
        current = refs.head(store)
        ctx.emit({refs.short_name(r): o.hex for r, o in heads.items()},
                 "\n".join(f"{'*' if r == current else ' '} {refs.short_name(r)}  {o.short()}" for r, o in heads.items())
                 or "no branches yet")
        return
    full = refs.branch_ref(name)
    if delete:
        refs.delete_ref(store, full)
        ctx.emit({"deleted": name}, f"Deleted branch {name}")
        return
    target = refs.resolve(store, start or "HEAD")
    old = store.refs.get(full)
    if old is not None and not force:
        from cas.errors import Conflict

        raise Conflict(f"branch {name} already exists", hint="use --force to move it")
    store.refs.set(full, target, expected=old, who="cas", message=f"branch: created from {start or 'HEAD'}")
    ctx.emit({"branch": name, "id": target.hex}, f"Branch {name} at {target.short()}")


@click.command()
@click.argument("name", required=False)
@click.argument("target", required=False)
@click.option("-m", "--message", help="Make an annotated tag with this message.")
@click.option("-f", "--force", is_flag=True, help="Move an existing tag (tags never move otherwise).")
@click.option("-d", "--delete", "delete", is_flag=True, help="Delete tag NAME.")
@pass_ctx
def tag(ctx: Context, name: str | None, target: str | None, message: str | None, force: bool, delete: bool) -> None:
    """List tags, or pin TARGET (default HEAD) as NAME."""
    store = ctx.store
    if name is None:
        tags = store.refs.as_dict(refs.TAGS)
        ctx.emit({refs.short_name(r): o.hex for r, o in tags.items()},
                 "\n".join(f"{refs.short_name(r)}  {o.short()}" for r, o in tags.items()) or "no tags yet")
        return
    if delete:
        if not force:
            raise UsageError("deleting a tag needs --force (tags are pins)")
        refs.delete_ref(store, refs.tag_ref(name))
        ctx.emit({"deleted": name}, f"Deleted tag {name}")
        return
    oid = refs.resolve(store, target or "HEAD")
    tid = refs.create_tag(store, name, oid, message=message, force=force)
    ctx.emit({"tag": name, "id": tid.hex, "target": oid.hex}, f"Tag {name} -> {oid.short()}")


@click.command(name="refs")
@click.option("--reflog", "show_reflog", is_flag=True, help="Show the reflog instead.")
@click.argument("ref", required=False)
@pass_ctx
def refs_cmd(ctx: Context, show_reflog: bool, ref: str | None) -> None:
    """List every ref, or with --reflog the history of REF (or all refs)."""
    store = ctx.store
    if show_reflog:
        name = None
        if ref:
            found = refs.find_ref(store, ref)
            name = found[0] if found else refs.check_name(ref)
        entries = store.refs.log(name)
        ctx.emit([{"ref": e.ref, "old": e.old.hex if e.old else None, "new": e.new.hex if e.new else None,
                   "time": e.time, "who": e.who, "message": e.message} for e in entries],
                 "\n".join(f"{_when(e.time)}  {e.ref}  {e.old.short() if e.old else '-'*12} -> "
                           f"{e.new.short() if e.new else '-'*12}  {e.who}: {e.message}" for e in entries))
        return
    all_refs = store.refs.as_dict("refs/")
    ctx.emit({r: o.hex for r, o in all_refs.items()},
             "\n".join(f"{o.hex}  {r}" for r, o in all_refs.items()) or "no refs yet")


@click.command()
@click.option("--no-verify", is_flag=True, help="Check connectivity only, do not re-hash objects.")
@pass_ctx
def fsck(ctx: Context, no_verify: bool) -> None:
    """Re-hash every object and check that everything reachable from refs is present."""
    from cas.fsck import fsck as run_fsck

    store = ctx.store
    total = store.info()["objects"]
    with _progress(ctx, "checking objects", total) as bar:
        task = bar.add_task("fsck", total=total)
        report = run_fsck(store, verify_hashes=not no_verify,
                          progress=lambda done, _total: bar.update(task, completed=done))
    problems = report.errors
    ctx.emit(report.to_dict(),
             "\n".join(f"{f.kind}: {f.message}" for f in report.findings)
             + (f"\nfsck: {len(problems)} problem(s) in {report.checked} objects" if problems
                else f"fsck: ok, {report.checked} objects checked"))
    if problems:
        sys.exit(5)


@click.command()
@click.option("--grace", default=None, help="Keep objects younger than this (e.g. 0, 3d, 2w)  [default: the saved budget's, else 2w]")
@click.option("-n", "--dry-run", is_flag=True, help="Report what would be freed, delete nothing.")
@click.option("--max-size", help="Byte budget (e.g. 20G): evict least recently read blobs beyond it; "
                                 "'none' with --save clears the saved one  [default: the saved budget]")
@click.option("--keep-commits", type=click.IntRange(min=1), default=None,
              help=f"Commits per branch whose entries a budget keeps  [default: {DEFAULT_KEEP_COMMITS}]")
@click.option("--save", is_flag=True, help="Save --max-size/--keep-commits/--grace as this store's gc budget "
                                           "(applied by `cas serve` as it writes, and by later `cas gc`).")
@pass_ctx
def gc(ctx: Context, grace: str | None, dry_run: bool, max_size: str | None,
       keep_commits: int | None, save: bool) -> None:
    """Remove objects no ref or recent reflog entry reaches; with a budget, evict old blobs."""
    from cas.gc import DEFAULT_GRACE_SECONDS
    from cas.gc import gc as run_gc

    budget = _budget(ctx.store, max_size, keep_commits, grace, save)
    grace_s = int(_duration(grace)) if grace is not None else None
    if grace_s is None:
        grace_s = budget.grace_seconds if budget and budget.grace_seconds is not None else DEFAULT_GRACE_SECONDS
    report = run_gc(ctx.store, grace_seconds=grace_s, dry_run=dry_run, budget=budget)
    verb = "would free" if dry_run else "freed"
    extra = f", expired {report.reflog_expired} reflog entries" if report.reflog_expired else ""
    if report.max_size is not None:
        extra += (f"; budget {human_size(report.max_size)}: {'would evict' if dry_run else 'evicted'} "
                  f"{report.evicted} blobs ({human_size(report.evicted_bytes)}), "
                  f"{human_size(report.size_after or 0)} stored")
    ctx.emit(report.to_dict(), f"gc: {verb} {report.objects_freed} objects, "
                               f"{human_size(report.stored_bytes_freed)} on disk "
                               f"({human_size(report.raw_bytes_freed)} raw); kept {report.objects_kept}{extra}")


def _budget(store: Store, max_size: str | None, keep: int | None, grace: str | None, save: bool) -> Budget | None:
    """The budget this gc applies: the options over the saved one; saved with ``save``."""
    saved = budgets.load(store)
    if max_size is not None and max_size.strip().lower() == "none":
        if save:
            budgets.save(store, None)
        return None
    size = budgets.parse_size(max_size) if max_size is not None else (saved.max_size if saved else None)
    if size is None:
        if save or keep is not None:
            raise UsageError("--save and --keep-commits need a budget", hint="pass --max-size, e.g. 20G")
        return None
    budget = Budget(
        size,
        keep if keep is not None else (saved.keep_commits if saved else DEFAULT_KEEP_COMMITS),
        int(_duration(grace)) if grace is not None else (saved.grace_seconds if saved else None),
    )
    if save:
        budgets.save(store, budget)
    return budget


def _duration(text: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
    text = text.strip().lower()
    try:
        if text[-1:] in units:
            return float(text[:-1]) * units[text[-1]]
        return float(text)
    except ValueError as exc:
        raise UsageError(f"bad duration {text!r}", hint="e.g. 0, 90s, 12h, 3d, 2w") from exc


@click.command()
@click.argument("rev", required=False)
@pass_ctx
def stats(ctx: Context, rev: str | None) -> None:
    """Objects, bytes (raw and stored), and entries by kind and env of REV (default HEAD)."""
    from rich.table import Table

    from cas.stats import stats as run_stats

    store = ctx.store
    root = None
    if rev or store.refs.get(refs.head(store)) is not None:
        root = refs.load_commit(store, refs.resolve(store, rev or "HEAD")).manifest
    s = run_stats(store, root, gc_preview=True)
    d: dict[str, Any] = s.to_dict()
    if ctx.as_json:
        ctx.emit(d)
        return
    if s.gc is not None:
        ctx.out.print(_gc_line(s.gc))
    table = Table(title="objects", box=None)
    for col in ("type", "count", "raw", "stored"):
        table.add_column(col, justify="left" if col == "type" else "right")
    for t, v in d.get("by_type", {}).items():
        table.add_row(t, str(v["count"]), human_size(v["raw"]), human_size(v["stored"]))
    ctx.out.print(table)
    for section in ("by_kind", "by_env"):
        if d.get(section):
            t2 = Table(title=f"entries {section.replace('_', ' ')}", box=None)
            t2.add_column(section[3:])
            t2.add_column("entries", justify="right")
            t2.add_column("bytes", justify="right")
            for k, v in d[section].items():
                t2.add_row(k, str(v["count"]), human_size(v["bytes"]))
            ctx.out.print(t2)


def _gc_line(g: GcPreview) -> str:
    budget = "no budget" if g.max_size is None else (
        f"budget {human_size(g.max_size)} (keeps the last {g.keep_commits} commits of each branch, and tags)")
    line = f"gc: {human_size(g.size)} stored, {budget}; next gc frees {human_size(g.frees_bytes)}"
    line += f" ({g.frees_objects} objects, {g.evicts} evicted)" if g.max_size is not None else f" ({g.frees_objects} objects)"
    return line + (f"\ngc: {g.problem}" if g.problem else "")


def register(cli: click.Group) -> None:
    for cmd in (init, put, cat, ls_, log, show, diff, branch, tag, refs_cmd, fsck, gc, stats):
        cli.add_command(cmd)
