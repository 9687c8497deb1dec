"""One error type for bad input, and the wrapper that turns it into one clear line."""
import logging
import os
import sys
from functools import wraps


class PipelineError(Exception):
    """Bad input or configuration: the message names the file, row or key."""


def first_line(err):
    """An error in one line for a one-line report: its message's first line (at most 200 characters),
    or its type's name when the message is empty."""
    return (str(err).strip().splitlines() or [type(err).__name__])[0][:200]


def out_of_memory(stage, what_to_lower):
    """The one-line error for a CUDA out-of-memory, naming the params that set the memory."""
    return PipelineError(f"{stage}: out of GPU memory; lower {what_to_lower} in params.yaml")


def cli(main):
    """Run a stage's main(); a PipelineError exits 2 with one line on stderr, its last line."""

    @wraps(main)
    def run(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except PipelineError as err:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(2)

    return run


def run_as_program(main):
    """A stage's entry point: it leaves as soon as its work is done, or at once after its one error line.

    Interpreter shutdown tears every module and object down one by one: after a model stage, over a
    second of nothing, paid by every stage of a `dvc repro`; after a failure, pages of library
    teardown noise (finalizers running after their modules are gone) below the line that matters.
    Outputs are written atomically and closed before main() returns, so leaving without the teardown
    leaves nothing half-done; only the output streams and logging still need flushing.
    """
    try:
        main()
        status = 0
    except SystemExit as stop:  # a failure's one line, --help, or a launcher passing on its workers' status
        status = stop.code if isinstance(stop.code, int) else int(stop.code is not None)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
