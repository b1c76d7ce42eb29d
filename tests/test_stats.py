"""cas.stats: the one size formatter every view (CLI tables, transfer lines, web pages) uses."""

from __future__ import annotations

import pytest

from cas.stats import human_size


@pytest.mark.parametrize(
    ("n", "shown"),
    [
        (0, "0 B"),
        (1023, "1023 B"),
        (1024, "1.0 KiB"),
        (1536.0, "1.5 KiB"),  # a transfer rate is a float
        (5 * 1024**2, "5.0 MiB"),
        (3 * 1024**3, "3.0 GiB"),
        (2 * 1024**4, "2.0 TiB"),
        (5000 * 1024**4, "5000.0 TiB"),  # the largest unit takes everything above it
        (-2048, "-2.0 KiB"),  # a shrink, in a diff
    ],
)
def test_sizes_read_as_people_write_them(n: float, shown: str) -> None:
    assert human_size(n) == shown
