"""The contract suite bound to the path remote, plus what only a path remote does."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from cas.errors import RemoteError, UsageError
from cas.remote import open_remote, scheme_of
from cas.remote.local import LocalRemote
from cas.store import Store

from .contract import RemoteContract


class TestLocalRemote(RemoteContract):
    @pytest.fixture
    def remote(self, tmp_path: Path) -> Iterator[LocalRemote]:
        Store.init(tmp_path / "remote").close()
        r = LocalRemote(tmp_path / "remote")
        yield r
        r.close()


def test_open_remote_dispatches_on_the_url(tmp_path: Path) -> None:
    Store.init(tmp_path / "r").close()
    r = open_remote(str(tmp_path / "r"))
    assert isinstance(r, LocalRemote)
    r.close()
    r = open_remote(f"file://{tmp_path / 'r'}")
    assert isinstance(r, LocalRemote)
    r.close()
    assert scheme_of("http://127.0.0.1:8080") == "http"
    assert scheme_of("https://cas.example") == "http"
    assert scheme_of("s3://bucket/prefix") == "s3"


@pytest.mark.parametrize("url", ["", "ftp://host/x", "s3://", "http://"])
def test_bad_urls_are_usage_errors(url: str) -> None:
    with pytest.raises(UsageError):
        open_remote(url)


def test_path_without_a_store_is_a_clear_remote_error(tmp_path: Path) -> None:
    with pytest.raises(RemoteError, match="no cas store"):
        open_remote(str(tmp_path / "nowhere"))
