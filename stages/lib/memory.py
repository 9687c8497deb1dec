"""Fitting work to the device's memory: the largest size whose attempt does not run out of it."""
import os

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


def device_memory_bytes(device):
    """The memory a process may use on `device`: the GPU's, under NLI_QLORA_GPU_MEMORY_GIB's cap if set
    (distributed.session), or the host's."""
    import torch

    if device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory
        return int(total * torch.cuda.get_per_process_memory_fraction(device))
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
