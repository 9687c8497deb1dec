"""Data-parallel runs through torchrun: one process per GPU, the same stage command in dvc.yaml.

A stage calls `relaunch()` first: with more than one process and not yet inside torchrun, it
re-runs itself under `python -m torch.distributed.run` and exits with its status. Inside, every
process loads the 4-bit base on its own device (`local_device`); Trainer does the gradient sync and
the stages gather results to the main process, which alone writes outputs. `session()` joins the
process group and leaves it when the stage ends.

`compute.processes: null` evaluates on one GPU, and fine-tunes on every visible GPU only a base
model large enough for the GPUs, not the host, to set the pace: a second process, its model load
and its gradient sync cost more than they save on a small model (docs/benchmarks.md).
"""
import os
import subprocess
import sys
from contextlib import contextmanager


def visible_gpus():
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def process_count(params, pays_to_spread):
    """`compute.processes`; null means one per visible GPU where `pays_to_spread()`, else one."""
    if params.processes is not None:
        return params.processes
    gpus = visible_gpus()
    return gpus if gpus > 1 and pays_to_spread() else 1


def rank():
    return int(os.environ.get("RANK", 0))


def world_size():
    return int(os.environ.get("WORLD_SIZE", 1))


def is_main():
    return rank() == 0


def is_launcher():
    """True in the process dvc started (not a torchrun worker)."""
    return "LOCAL_RANK" not in os.environ


def local_device():
    import torch

    return f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available() else "cpu"


def relaunch(module, argv, processes):
    """Under torchrun with `processes` workers, unless one process suffices or we already are."""
    if processes <= 1 or not is_launcher():
        return
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
               "-m", module, *argv]
    print(f"{module}: running {processes} processes: {' '.join(command[1:])}", flush=True)
    sys.exit(subprocess.run(command).returncode)


@contextmanager
def session():
    """Inside: the process group torchrun set up (NCCL on GPUs, gloo on CPUs), left at the end.

    `NLI_QLORA_GPU_MEMORY_GIB=24` caps each process's GPU memory, to try a smaller card's fit.
    """
    import torch
    import torch.distributed as dist

    joined = world_size() > 1 and not dist.is_initialized()
    if torch.cuda.is_available():
        torch.cuda.set_device(local_device())
        cap = os.environ.get("NLI_QLORA_GPU_MEMORY_GIB")  # act as a smaller card: "does it fit 24 GB?"
        if cap:
            total = torch.cuda.get_device_properties(local_device()).total_memory
            torch.cuda.set_per_process_memory_fraction(min(1.0, float(cap) * 2**30 / total))
    if joined:
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    try:
        yield
    finally:
        if joined and dist.is_initialized():
            dist.destroy_process_group()


def agree_on_min(value):
    """The smallest of every process's `value` (the value itself alone)."""
    import torch.distributed as dist

    if world_size() == 1:
        return value
    values = [None] * world_size()
    dist.all_gather_object(values, value)
    return min(values)


def gather(value):
    """Every process's `value`, in rank order, on the main process (None elsewhere)."""
    import torch.distributed as dist

    if world_size() == 1:
        return [value]
    gathered = [None] * world_size() if is_main() else None
    dist.gather_object(value, gathered, dst=0)
    return gathered
