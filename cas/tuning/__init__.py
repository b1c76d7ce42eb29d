"""Autotune results as records: what was tuned, the choice, its time, where and when.

:mod:`cas.tuning.record` is the record and its entry (kind :data:`KIND`),
:mod:`cas.tuning.readers` reads the files torch keeps results in, and
:mod:`cas.tuning.merge` is the merge rule (the faster measurement wins) and its lines in
a merge commit's message. Listing records for a reader (``cas autotune log|show|diff``)
is the CLI's (cas_cli.autotune_rows); recording them from a torch process is
cas.torch.autotune's. Nothing here imports torch.
"""

from __future__ import annotations

from cas.tuning.merge import FASTER, MERGE_RULES, TIMING_KEYS, entry_time, merge_lines
from cas.tuning.readers import from_best_config, from_timing_file, parse_inputs_key
from cas.tuning.record import (
    KIND,
    RECORD_FORMAT,
    Record,
    check_entry,
    config_line,
    entry_meta,
    gemm_key,
    short_choice,
)

__all__ = [
    "FASTER",
    "KIND",
    "MERGE_RULES",
    "RECORD_FORMAT",
    "TIMING_KEYS",
    "Record",
    "check_entry",
    "config_line",
    "entry_meta",
    "entry_time",
    "from_best_config",
    "from_timing_file",
    "gemm_key",
    "merge_lines",
    "parse_inputs_key",
    "short_choice",
]
