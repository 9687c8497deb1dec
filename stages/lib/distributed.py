"""Data-parallel runs through torchrun: one process per GPU, the same stage command in dvc.yaml.

A stage calls `relaunch()` first: with `compute.processes` > 1 and not yet inside torchrun, it
re-runs itself under `python -m torch.distributed.run` and exits with its status. Inside, every
process loads the 4-bit base on its own device (`local_device`); Trainer does the gradient sync and
the stages gather results to the main process, which alone writes outputs.
"""
import os
import subprocess
import sys


def visible_gpus():
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def process_count(params):
    """`compute.processes`, with null meaning one per visible GPU (one on a CPU)."""
    return params.processes if params.processes is not None else max(1, visible_gpus())


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


def relaunch(module, argv, params):
    """Under torchrun with `params.processes` workers, unless one process suffices or we already are."""
    processes = process_count(params)
    if processes <= 1 or not is_launcher():
        return
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
               "-m", module, *argv]
    print(f"{module}: running {processes} processes: {' '.join(command[1:])}", flush=True)
    sys.exit(subprocess.run(command).returncode)


def init():
    """Join the process group torchrun set up (NCCL on GPUs, gloo on CPUs); a no-op alone."""
    import torch
    import torch.distributed as dist

    if world_size() > 1 and not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(local_device())
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")


def gather(value):
    """Every process's `value`, in rank order, on the main process (None elsewhere)."""
    import torch.distributed as dist

    if world_size() == 1:
        return [value]
    gathered = [None] * world_size() if is_main() else None
    dist.gather_object(value, gathered, dst=0)
    return gathered
