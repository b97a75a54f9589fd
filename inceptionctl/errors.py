"""Errors that end a command with one clear line and a known exit code."""

from __future__ import annotations


class InceptionError(Exception):
    """A problem the user can fix (bad input, missing file, unavailable backend): exit code 2."""

    exit_code = 2


class CheckFailed(InceptionError):
    """A check ran and failed (parity, accuracy target): exit code 1."""

    exit_code = 1
