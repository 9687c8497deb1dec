"""One error type for bad input, and the wrapper that turns it into one clear line."""
import sys
from functools import wraps


class PipelineError(Exception):
    """Bad input or configuration: the message names the file, row or key."""


def cli(main):
    """Run a stage's main(); a PipelineError exits 2 with one line on stderr, no traceback."""

    @wraps(main)
    def run(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except PipelineError as err:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(2)

    return run
