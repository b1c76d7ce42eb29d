"""What every command gets: the store location, output mode, and printing helpers."""

from __future__ import annotations

import functools
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from rich.console import Console

    from cas.store import Store


#: Variables with which rich takes a non-tty for a terminal (rich.console.Console.is_terminal).
_RICH_TERMINAL_VARS = ("FORCE_COLOR", "TTY_COMPATIBLE")


class Context:
    """What every command gets: where the store is, and how to print."""

    def __init__(self, store_path: Path, as_json: bool, quiet: bool) -> None:
        self.store_path = store_path
        self.as_json = as_json
        self.quiet = quiet
        self._store: Store | None = None

    # The consoles are made on first use: rich's import is ~50 ms that `cas run` spends
    # before the program starts and never prints through.
    @functools.cached_property
    def out(self) -> Console:
        from rich.console import Console

        return Console(highlight=False, soft_wrap=True)

    @functools.cached_property
    def err(self) -> Console:
        from rich.console import Console

        return Console(stderr=True, highlight=False, soft_wrap=True)

    def draws_live(self) -> bool:
        """Whether a live display on stderr (a progress bar) would show: not --quiet or
        --json, and stderr a terminal as rich judges it. rich draws a transient bar on
        nothing else (a pipe, a file, TERM=dumb), so where stderr is no tty and no
        variable of rich's says otherwise, the answer comes without importing rich: a
        machine of a fleet, its stderr a pipe or a log, never pays for rich's import and
        its refresh thread waking ten times a second while it clones (issue 20)."""
        if self.quiet or self.as_json:
            return False
        if "err" not in self.__dict__ and not any(v in os.environ for v in _RICH_TERMINAL_VARS):
            if not sys.stderr.isatty():
                return False
        return self.err.is_terminal and not self.err.is_dumb_terminal

    @property
    def store(self) -> Store:
        if self._store is None:
            from cas.store import Store  # on first use: `cas run` never opens it here

            self._store = Store(self.store_path)
        return self._store

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None

    def emit(self, data: Any, text: str | None = None) -> None:
        """Print ``data`` as JSON under --json, else ``text`` (or str(data))."""
        if self.as_json:
            click.echo(json.dumps(data, indent=2, default=str))
        elif text is not None:
            # Plain text, what objects say (never markup or emoji codes): written as it
            # is, tabs expanded as rich did, so a command that prints only this never
            # imports rich (~0.1 s of every `cas clone`).
            click.echo(text.expandtabs(8))

    def info(self, text: str) -> None:
        if not self.quiet and not self.as_json:
            self.err.print(text)


pass_ctx = click.make_pass_decorator(Context)
