"""The errors the applications raise for their users to fix (the command line prints them in one line)."""

from __future__ import annotations


class UsageError(ValueError):
    """Options that cannot run together (a scenario without the data it needs, say); the message says the fix."""
