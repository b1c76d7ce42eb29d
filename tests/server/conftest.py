"""A `cas serve` per test module, with a small request limit (1 MiB), for hostile-input tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from servers import Served


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    s = Served(tmp_path_factory.mktemp("small"), "--max-request", "1M")
    try:
        yield s
    finally:
        s.stop()
