"""Measuring a stage: clocks that wait for the GPU, and peak memory."""
import resource
import sys
import time


def synced_clock():
    """perf_counter after the GPU's queued work is done, so that spans time the work, not its launch."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter()


def peak_memory():
    """Peak memory of this process: GPU allocated/reserved (if any) and CPU resident set, in GiB."""
    gib = 1024 ** 3
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    memory = {"cpu_peak_rss_gib": rss / gib * (1 if sys.platform == "darwin" else 1024)}
    import torch

    if torch.cuda.is_available():
        memory["gpu_peak_allocated_gib"] = torch.cuda.max_memory_allocated() / gib
        memory["gpu_peak_reserved_gib"] = torch.cuda.max_memory_reserved() / gib
    return memory
