"""Fitting work to the device's memory: the largest size whose attempt does not run out of it."""
from accelerate.utils import find_executable_batch_size


def largest_fitting(sizes, attempt):
    """The first of `sizes` (largest first) for which `attempt(size)` runs without running out of
    memory, or 0 if none does. accelerate's `find_executable_batch_size` does the retrying, the
    out-of-memory test and the cache clearing between tries."""
    smaller = iter([*sizes[1:], 0])

    @find_executable_batch_size(starting_batch_size=sizes[0], reduce_batch_size_fn=lambda: next(smaller))
    def first_fitting(size):
        attempt(size)
        return size

    try:
        return first_fitting()
    except RuntimeError as err:
        if "No executable batch size found" in str(err):
            return 0
        raise
