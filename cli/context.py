"""What every command gets: the store location, output mode, and printing helpers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
from rich.console import Console

from cas.store import Store


class Context:
    """What every command gets: where the store is, and how to print."""

    def __init__(self, store_path: Path, as_json: bool, quiet: bool) -> None:
        self.store_path = store_path
        self.as_json = as_json
        self.quiet = quiet
        self.out = Console(highlight=False, soft_wrap=True)
        self.err = Console(stderr=True, highlight=False, soft_wrap=True)
        self._store: Store | None = None

    @property
    def store(self) -> Store:
        if self._store is None:
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
            self.out.print(text)

    def info(self, text: str) -> None:
        if not self.quiet and not self.as_json:
            self.err.print(text)


pass_ctx = click.make_pass_decorator(Context)
