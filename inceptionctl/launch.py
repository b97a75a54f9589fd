"""``python -m inceptionctl.launch TORCHRUN-ARGS``: torchrun, as ``train --nproc`` starts it.

The same launcher as ``python -m torch.distributed.run`` (its arguments, its agent, its
restarts), with one difference: when a process fails, torchrun raises ``ChildFailedError`` and
prints a traceback of its own under the process's message. Here that becomes one line naming
the failed rank and its exit code, and the launcher exits with that code (2 for a user error,
as a single process would), so a mistake made under ``--nproc`` reads as it does without. A
SIGINT / SIGTERM that stops the processes (they save, rank 0 says how to resume) ends it with
130 / 143 and no traceback of torchrun's.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import sys
import tempfile
from typing import Any, Callable

from .errors import say


def exit_code(code: int) -> int:
    """A process's exit code as a shell reports it: 128 + N for a process killed by signal N."""
    return 128 - code if code < 0 else (code or 1)


def first_failure(failures: dict) -> tuple[int, object]:
    """The rank to report: the first that failed (torchrun's choice). Once one process fails
    the others stop too, often within the same second (torchrun's timestamps are whole
    seconds): their collectives break (they exit 1, saying so) or torchrun's agent sends them
    SIGTERM. Within that second the one that says most is chosen: an exit code other than 1
    (2: a user error), then a signal other than SIGTERM (the OOM killer's SIGKILL), then 1 (a
    crash), then SIGTERM; then the lowest rank."""
    def said(code: int) -> int:
        return 0 if code > 1 else 1 if code != -signal.SIGTERM and code < 0 else \
            2 if code == 1 else 3

    rank = min(failures, key=lambda r: (failures[r].timestamp, said(failures[r].exitcode), r))
    return rank, failures[rank]


def main(argv: list[str] | None = None) -> int:
    from torch.distributed.run import get_args_parser, run

    args = get_args_parser().parse_args(sys.argv[1:] if argv is None else argv)
    # the agent logs each failed process at ERROR level; the line below says it once
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    # torchrun's default is a fresh torchelastic_* folder in the temporary folder, never
    # removed (one per run); without --tee / --redirects it only passes the failed processes'
    # error files to the agent, read before run() returns: ours goes when the run ends
    own_logs = None
    if args.log_dir is None:
        own_logs = args.log_dir = tempfile.mkdtemp(prefix="inceptionctl-torchrun-")
    try:
        return _run(args, run)
    finally:
        if own_logs is not None:
            shutil.rmtree(own_logs, ignore_errors=True)


def _run(args: Any, run: Callable[[Any], object]) -> int:
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    try:
        run(args)
    except ChildFailedError as failed:
        rank, failure = first_failure(failed.failures)
        code = exit_code(failure.exitcode)
        killed = failure.exitcode < 0
        how = (f"was killed by {signal.Signals(-failure.exitcode).name}"
               if killed and -failure.exitcode in signal.valid_signals()
               else f"exited with code {failure.exitcode}")
        # a process killed by a signal (the OOM killer, say) said nothing of its own
        said = "" if killed else "; the message is above"
        say(f"error: train --nproc {args.nproc_per_node}: rank {rank} {how} "
            f"({len(failed.failures)} of the processes failed{said})")
        return code
    except SignalException as stopped:
        # SIGINT / SIGTERM reached the group: the ranks saved and rank 0 said how to resume;
        # exit as a shell reports a process ended by that signal
        return 128 + int(stopped.sigval)
    return 0


if __name__ == "__main__":
    status = main()
    # Leave without the interpreter's teardown: after a stop, destroying torchrun's store (a C++
    # thread still running) could abort the process ("terminate called without an active
    # exception"), turning an orderly 143 into SIGABRT. Everything is said and saved by now.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
