"""Where the commands' lines go: the report on stdout and progress on stderr, each line at once
(also when the stream is a file or a pipe)."""

from __future__ import annotations

import sys
from collections.abc import Callable

Lines = Callable[[str], None]
"""Receives a command's lines one at a time (``report_line``, ``progress_line``, or a test's list)."""


def report_line(line: str) -> None:
    """A line of a report, on stdout."""
    print(line, flush=True)


def progress_line(line: str) -> None:
    """A progress line, on stderr."""
    print(line, file=sys.stderr, flush=True)
