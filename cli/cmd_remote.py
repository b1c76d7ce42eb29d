"""Remote commands: remote add|remove|list, fetch, pull, push, clone.

Thin: parse, open the remote (a configured name or a URL), call cas.sync, print a
summary. Progress bars appear only on a terminal, for transfers that last more than a
second.
"""

from __future__ import annotations

import contextlib
import gc
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from cas import refs, remotes_config, sync
from cas.config import env_value
from cas.digest import ObjectId, is_hex_prefix
from cas.errors import CasError, TransientRemoteError, UsageError
from cas.remote.base import Remote
from cas.remote.retry import RetryingRemote
from cas.stats import human_size
from cas.store import Store
from cas_cli.context import Context, pass_ctx

if TYPE_CHECKING:
    from rich.progress import Progress

# rich is imported where it draws (a bar on a terminal, a warning), not with the module:
# a clone of a machine of a fleet prints one summary line and pays nothing for it (issue 20).

#: Progress bars wait this long, so quick transfers print only their summary.
BAR_DELAY = 1.0
#: Objects allocated between young collections of Python's cyclic GC during a transfer
#: (Python's default: 700). A transfer is one process that allocates hundreds of
#: thousands of objects living to its end (httpx's and boto3's modules and S3 models,
#: the walk's ids and rows): at 700 the collector walked them again and again, 4-8 % of
#: a `cas clone`'s CPU (bench/fleet_cpu.py; issue 20). Cycles are still collected, in
#: larger steps, so memory stays bounded; big buffers (bytes) are not tracked by it.
TRANSFER_GC_YOUNG = 10_000


def _collect_less() -> None:
    """Fewer cyclic-GC passes for the rest of this (transfer) process."""
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(TRANSFER_GC_YOUNG, older, oldest)


class Feedback:
    """A :data:`cas.sync.ProgressFn` drawing rich bars on a terminal once a transfer
    passes a second."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.start = time.monotonic()
        self.bars: Progress | None = None
        self.tasks: dict[str, Any] = {}
        self.live = ctx.draws_live()  # no terminal: nothing would show, so nothing is drawn

    def __call__(self, phase: str, objects: int, done: int, total_objects: int, total: int) -> None:
        if not self.live:
            return
        if self.bars is None:
            if time.monotonic() - self.start < BAR_DELAY:
                return
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                Progress,
                TextColumn,
                TransferSpeedColumn,
            )

            self.bars = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                TextColumn("{task.fields[objects]} objects"),
                console=self.ctx.err,
                transient=True,
            )
            self.bars.start()
        if phase not in self.tasks:
            self.tasks[phase] = self.bars.add_task(phase, total=total or None, objects=0)
        self.bars.update(self.tasks[phase], completed=done, total=total or None, objects=objects)

    def close(self) -> None:
        if self.bars is not None:
            self.bars.stop()
            self.bars = None


def _open(ctx: Context, name_or_url: str | None) -> tuple[str | None, Remote]:
    store = ctx.store
    if name_or_url is None:
        known = [r.name for r in remotes_config.list_remotes(store)]
        if "origin" in known or not known:
            name_or_url = "origin"
        elif len(known) == 1:
            name_or_url = known[0]
        else:
            raise UsageError(f"which remote? several are configured: {', '.join(known)}")
    name, url, options = remotes_config.resolve(store, name_or_url)
    return name, _connect(url, options)


def _connect(url: str, options: dict[str, str]) -> Remote:
    """Open ``url``; secrets come from environment variables named in the options."""
    from cas.remote import open_remote, scheme_of

    opts: dict[str, Any] = dict(options)
    token_env = opts.pop("token_env", None)
    if scheme_of(url) == "http" and "token" not in opts:
        token = env_value(token_env) if token_env else env_value("CAS_TOKEN")
        if token:
            opts["token"] = token
    return RetryingRemote(open_remote(url, **opts))


def _absolute(url: str) -> str:
    """A path remote is recorded absolute, so it means the same from any directory."""
    from cas.remote import scheme_of

    if scheme_of(url) == "path" and not url.lower().startswith("file://"):
        return str(Path(url).expanduser().resolve())
    return url


def _envs(store: Store | None, values: tuple[str, ...]) -> set[ObjectId] | None:
    """``--env current`` (this machine's torch env) or env ids; None when not given."""
    if not values:
        return None
    out: set[ObjectId] = set()
    for value in values:
        if value == "current":
            # Imported here: only the CLI may pull torch in, and only when asked.
            from cas.torch.env import current_env

            out.add(current_env().id)
        elif len(value) == 64:
            out.add(ObjectId.parse(value))
        elif store is not None and is_hex_prefix(value):
            out.add(store.objects.resolve_unique(value))
        else:
            raise UsageError(f"not an env id: {value!r}", hint="give 'current' or a full env id")
    return out


def _cpu(values: tuple[str, ...]) -> str | None:
    """With ``--env current``, this CPU's variant: CPU-bound entries (C++ kernels,
    precompiled headers) of other CPU models are then left on the remote."""
    if "current" not in values:
        return None
    from cas.torch.env import cpu_fingerprint

    return f"cpu-{cpu_fingerprint()}"


def _summary(ctx: Context, verb: str, result: sync.Result, extra: dict[str, Any] | None = None) -> None:
    s = result.stats
    data = {"action": verb, **result.to_dict(), **(extra or {})}
    for u in result.updates:  # revocations this store may not honour (cas.sync.revoked)
        if u.status == "ignored":
            ctx.err.print(f"warning: {refs.short_name(u.ref)} from the remote not taken: {u.note}", markup=False)
    if ctx.as_json:
        ctx.emit(data)
        return
    if ctx.quiet:
        return
    lines = [
        f"{verb} {s.objects} objects, {human_size(s.bytes)}"
        + (f" ({human_size(s.wire_bytes)} on the wire)" if s.wire_bytes else "")
        + f" in {s.seconds:.2f} s ({human_size(s.rate)}/s)"
    ]
    for u in result.updates:
        old = u.old.short() if u.old else "(none)"
        new = u.new.short() if u.new else "(deleted)"
        note = f" - {u.note}" if u.note else ""
        lines.append(f"  {refs.short_name(u.ref)}: {old} -> {new} [{u.status}]{note}")
    ctx.emit(data, "\n".join(lines))


# -- remote add|remove|list ------------------------------------------------------------------


@click.group("remote")
def remote_group() -> None:
    """Manage named remotes (paths, http(s)://host:port, s3://bucket/prefix)."""


def _options(items: tuple[str, ...]) -> dict[str, str]:
    opts = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"bad option {item!r}", hint="use -o KEY=VALUE")
        opts[key] = value
    return opts


_option_option = click.option(
    "-o", "--option", "options", multiple=True, metavar="KEY=VALUE",
    help="Transport option, e.g. endpoint=…, region=…, token_env=VAR, deadline=SECONDS.",
)


@remote_group.command("add")
@click.argument("name")
@click.argument("url")
@_option_option
@click.option("--trusted", is_flag=True,
              help="Let torch load what is pulled from this remote (else only signed tags).")
@pass_ctx
def remote_add(ctx: Context, name: str, url: str, options: tuple[str, ...], trusted: bool) -> None:
    """Add remote NAME at URL.

    With --trusted, torch may load artifacts pulled from it without a signed tag
    (see docs/torch-live.md, trust policy); otherwise only signed tags are loaded.
    """
    opts = _options(options)
    # `-o trusted=true` (older cas read it from the options) means --trusted
    trusted = trusted or opts.pop("trusted", "").lower() == "true"
    cfg = remotes_config.add(ctx.store, name, _absolute(url), **opts)
    remotes_config.set_trusted(ctx.store, name, trusted)
    trust = " (trusted)" if trusted else ""
    ctx.emit(cfg.to_dict() | {"trusted": trusted}, f"added remote {name} ({cfg.kind}): {url}{trust}")


@remote_group.command("remove")
@click.argument("name")
@pass_ctx
def remote_remove(ctx: Context, name: str) -> None:
    """Remove remote NAME and its tracking refs."""
    cfg = remotes_config.remove(ctx.store, name)
    ctx.emit(cfg.to_dict(), f"removed remote {name}")


@remote_group.command("list")
@click.option("-v", "--verbose", is_flag=True, help="Show URLs and options.")
@pass_ctx
def remote_list(ctx: Context, verbose: bool) -> None:
    """List configured remotes."""
    found = remotes_config.list_remotes(ctx.store)
    trust = {r.name: remotes_config.trust_of(ctx.store, remotes_config.trust_identity(ctx.store, r)) for r in found}

    def shown(r: remotes_config.RemoteConfig) -> str:
        why = trust[r.name]
        return f"trusted ({why})" if why else "untrusted (artifacts reach torch only through signed tags)"

    if verbose:
        text = "\n".join(
            f"{r.name}  {r.url}" + "".join(f" {k}={v}" for k, v in sorted(r.options.items())) + f"  {shown(r)}"
            for r in found
        )
    else:
        text = "\n".join(f"{r.name}  {'trusted' if trust[r.name] else 'untrusted'}" for r in found)
    ctx.emit([r.to_dict() | {"trusted": trust[r.name] is not None, "trust": shown(r)} for r in found], text)


# -- transfers -----------------------------------------------------------------------------------

_env_option = click.option(
    "--env", "envs", multiple=True, metavar="ENV",
    help="Fetch only entries of this env: 'current' (this machine, and of C++ kernels and "
         "headers only those for this CPU) or an env id. Repeatable.",
)


@click.command()
@click.argument("remote", required=False)
@_env_option
@click.option("--force", is_flag=True, help="Let fetched tags replace local ones.")
@pass_ctx
def fetch(ctx: Context, remote: str | None, envs: tuple[str, ...], force: bool) -> None:
    """Fetch branches and tags of REMOTE (default origin) into refs/remotes/REMOTE/."""
    _collect_less()
    name, r = _open(ctx, remote)
    feedback = Feedback(ctx)
    try:
        result = sync.fetch(ctx.store, r, remote_name=name, envs=_envs(ctx.store, envs),
                            force=force, progress=feedback, cpu_variant=_cpu(envs))
    finally:
        feedback.close()
        r.close()
    _summary(ctx, "fetched", result)


@click.command()
@click.argument("remote", required=False)
@click.argument("branch", required=False)
@_env_option
@click.option("--force", is_flag=True, help="Let fetched tags replace local ones.")
@click.option("--ours", is_flag=True, help="Keep local entries for conflicts no rule decides.")
@pass_ctx
def pull(ctx: Context, remote: str | None, branch: str | None, envs: tuple[str, ...],
         force: bool, ours: bool) -> None:
    """Fetch REMOTE and bring BRANCH (default: the current one) up to it."""
    _collect_less()
    store = ctx.store
    local = branch or refs.short_name(refs.head(store))
    name, r = _open(ctx, remote)
    feedback = Feedback(ctx)
    try:
        result, done = sync.pull(store, r, branch=local, remote_name=name,
                                 envs=_envs(store, envs), force=force,
                                 allow_conflicts=ours, progress=feedback, cpu_variant=_cpu(envs))
    finally:
        feedback.close()
        r.close()
    _summary(ctx, "fetched", result, {"integration": done.to_dict()})
    if ctx.as_json or ctx.quiet:
        return
    new = done.new.short() if done.new else "?"
    lines = [f"{local}: {done.kind} -> {new}"]
    for key, _, rule in done.resolved:
        lines.append(f"  conflict on {key}: resolved by rule '{rule}'")
    for key, _, _ in done.conflicts:
        lines.append(f"  conflict on {key}: kept ours (no rule)")
    ctx.out.print("\n".join(lines), markup=False)


def _refspecs(store: Store, specs: tuple[str, ...], all_: bool, tags: bool) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    if all_:
        out += [(r, r) for r in store.refs.as_dict(refs.HEADS)]
    if tags:
        out += [(r, r) for r in store.refs.as_dict(refs.TAGS)]
    for spec in specs:
        src, _, dst = spec.partition(":")
        found = refs.find_ref(store, src)
        if found is None or found[0].startswith(refs.REMOTES):
            raise UsageError(f"no local branch or tag {src!r} to push")
        full = found[0]
        if dst:
            kind = refs.TAGS if full.startswith(refs.TAGS) else refs.HEADS
            target = refs.check_name(dst if dst.startswith("refs/") else kind + dst)
        else:
            target = full
        out.append((full, target))
    if not out:
        out.append((refs.head(store), refs.head(store)))
    return list(dict.fromkeys(out))


@click.command()
@click.argument("remote", required=False)
@click.argument("specs", nargs=-1, metavar="[REF[:REMOTE_REF]]...")
@click.option("--all", "all_", is_flag=True, help="Push every branch.")
@click.option("--tags", is_flag=True, help="Push every tag.")
@click.option("--force", is_flag=True, help="Allow non-fast-forward updates and moving tags.")
@pass_ctx
def push(ctx: Context, remote: str | None, specs: tuple[str, ...], all_: bool, tags: bool,
         force: bool) -> None:
    """Send branches/tags (default: the current branch) to REMOTE (default origin)."""
    _collect_less()
    store = ctx.store
    pairs = _refspecs(store, specs, all_, tags)
    name, r = _open(ctx, remote)
    feedback = Feedback(ctx)
    try:
        result = sync.push(store, r, pairs, remote_name=name, force=force, progress=feedback)
    finally:
        feedback.close()
        r.close()
    _summary(ctx, "pushed", result)


@click.command()
@click.argument("url")
@click.argument("path", required=False, type=click.Path(file_okay=False, path_type=Path))
@_env_option
@click.option("--name", "remote_name", default="origin", show_default=True,
              help="Name of the remote in the new store.")
@click.option("--trusted", is_flag=True,
              help="Let torch load what comes from this remote (else only signed tags).")
@_option_option
@pass_ctx
def clone(ctx: Context, url: str, path: Path | None, envs: tuple[str, ...], remote_name: str,
          trusted: bool, options: tuple[str, ...]) -> None:
    """Create a store at PATH (default --store) holding REMOTE's branches and tags.

    -o options are used for the clone and kept in the new store's remote config.
    """
    _collect_less()
    target = path or ctx.store_path
    wanted = _envs(None, envs)
    remotes_config.check_name(remote_name)
    opts = _options(options)
    r = _connect(url, opts)
    feedback = Feedback(ctx)
    fresh = not (target / "data.mdb").exists()
    created = not target.exists()
    try:
        # A new store takes its transactions without an fsync each, and is synced once
        # before the clone reports success (or keeps a cut clone to resume): ~16 durable
        # commits, 2 fsyncs each, made a fleet's clones queue on the disk's journal. A
        # process killed meanwhile loses nothing (the page cache holds every commit); a
        # power loss before that sync may leave a store to remove, of a clone that never
        # said it was done (docs/sync.md, "Resume").
        with Store.init(target, durable=not fresh) as store:
            remotes_config.set_trusted(store, remote_name, trusted, url=_absolute(url))
            try:
                result = sync.clone(store, r, remote_name=remote_name, url=_absolute(url), envs=wanted,
                                    progress=feedback, cpu_variant=_cpu(envs), options=opts)
            except BaseException as exc:
                fresh = fresh and not _resumable(store, exc)
                if not fresh:
                    with contextlib.suppress(CasError):  # the cut, not this, is the error to tell
                        store.sync()  # kept to resume: durable from here
                raise
            store.sync()
            fresh = False
    except BaseException:
        if fresh:
            _remove_store(target, created)
        raise
    finally:
        feedback.close()
        r.close()
    _summary(ctx, f"cloned into {target}:", result)


def _resumable(store: Store, exc: BaseException) -> bool:
    """Whether a failed clone keeps its store: only a cut (a transient remote failure,
    or Ctrl-C) after objects arrived, so that `cas clone` again (or `cas fetch`) resumes
    from there. Any other failure is a verdict on the remote (malformed, hostile, over a
    limit or a deadline) or a crash: nothing of the clone is kept."""
    cut = isinstance(exc, (TransientRemoteError, KeyboardInterrupt))
    return cut and next(store.objects.iter_ids(), None) is not None


def _remove_store(target: Path, created: bool) -> None:
    """Remove a store this command made (the dir too if it made it)."""
    for name in ("data.mdb", "lock.mdb"):
        (target / name).unlink(missing_ok=True)
    if created:
        shutil.rmtree(target, ignore_errors=True)


def register(cli: click.Group) -> None:
    for cmd in (remote_group, fetch, pull, push, clone):
        cli.add_command(cmd)
