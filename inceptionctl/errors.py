"""Errors that end a command with one clear line and a known exit code."""

from __future__ import annotations

import re
import sys


class InceptionError(Exception):
    """A problem the user can fix (bad input, missing file, unavailable backend): exit code 2."""

    exit_code = 2


class CheckFailed(InceptionError):
    """A check ran and failed (parity, accuracy target): exit code 1."""

    exit_code = 1


class OutputError(InceptionError, OSError):
    """A file or folder could not be written (permission, read-only disk, full disk): one line
    naming the path, exit code 2. An OSError too, so code that tolerates a failed write (an
    optional cache) still catches it as one."""

    def __init__(self, path: object, cause: OSError, what: str = "cannot write"):
        OSError.__init__(self, cause.errno, cause.strerror, str(path))
        self.message = f"{path}: {what} ({cause.strerror or cause})"

    def __str__(self) -> str:
        return self.message


def one_line(exc: BaseException, limit: int | None = None, default: str | None = None) -> str:
    """The message of ``exc`` as one line, for an ``error:`` line or a reason column.

    A DataLoader worker wraps the real error in a traceback: its last line (without the
    ``module.Error:`` prefix) is the message. ONNX Runtime's ``[ONNXRuntimeError] : 2 : X :``
    prefix and torchvision's C++ source locations are dropped. An empty message gives
    ``default`` (else the exception's type name).
    """
    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    if not lines:
        text = default or type(exc).__name__
    elif any("Traceback (most recent call last)" in ln for ln in lines):
        head, sep, rest = lines[-1].partition(": ")
        text = rest if sep and "." in head and " " not in head else lines[-1]
    else:
        text = lines[0]
    text = re.sub(r"\x1b\[[0-9;]*m", "", text)  # a terminal's colours (torch bolds some words)
    text = re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ", "", text)
    text = re.sub(r"^\S+, \S+\.(?:cpp|cc|cu|h|hpp):\d+, ", "", text)  # "fn, file.cpp:79, "
    return text[:limit] if limit else text


def say(line: str) -> None:
    """``line`` on stderr in one write (print writes the text and the newline apart), so the
    lines of processes sharing a terminal under torchrun never run together."""
    sys.stderr.write(line + "\n")
    sys.stderr.flush()
