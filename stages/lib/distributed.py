"""Data-parallel runs: one process per GPU, the same stage command in dvc.yaml.

A stage calls `relaunch()` first: with more than one process and not yet a worker, it starts the
workers itself (this module's launcher, one machine) and exits with their status. Inside, every
process loads the 4-bit base on its own device (`local_device`); Trainer's data-parallel wrapper does
the gradient sync (replayed CUDA graphs do their own: graphs.py), and the stages gather results to
the main process, which alone writes outputs. `session()` joins the process group and leaves it when
the stage ends. Under torchrun (several machines) the stage is already a worker and joins torchrun's
group instead.

`compute.processes: null` runs a model stage on every visible GPU only for a base model large enough
for the GPUs, not the host, to set the pace (`model.spreads_over_gpus`): a second process, its model
load and its gradient sync cost more than they save on a small model (docs/benchmarks.md).
"""
import os
import subprocess
import sys
import tempfile
import threading
import time
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
    """True in the process dvc started (not a worker of relaunch or torchrun)."""
    return "LOCAL_RANK" not in os.environ


def local_device():
    import torch

    return f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available() else "cpu"


def relaunch(module, argv, processes):
    """Run `python -m module argv` as `processes` workers and exit with their status, unless one
    process suffices or this is a worker already.

    The workers meet through a file, not a TCP store (torchrun's binds every network interface), and
    gloo and NCCL talk over loopback: a one-machine run opens no port to the network. The first
    worker to fail stops the others, so its error line is the last one printed.
    """
    if processes <= 1 or not is_launcher():
        return
    print(f"{module}: running {processes} processes", flush=True)
    with tempfile.TemporaryDirectory(prefix="nli-qlora-") as meeting:
        shared = {"WORLD_SIZE": str(processes), "LOCAL_WORLD_SIZE": str(processes), RENDEZVOUS: f"file://{meeting}/store",
                  "GLOO_SOCKET_IFNAME": loopback_interface(), "NCCL_SOCKET_IFNAME": loopback_interface(),
                  "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(max(1, os.cpu_count() // processes)))}
        workers = [subprocess.Popen([sys.executable, "-m", module, *argv], stderr=subprocess.PIPE,
                                    env=os.environ | shared | {"RANK": str(r), "LOCAL_RANK": str(r)})
                   for r in range(processes)]
        sys.exit(wait_for(workers))


RENDEZVOUS = "NLI_QLORA_RENDEZVOUS"  # set by relaunch for its workers: where they meet


def loopback_interface():
    """The name of the loopback network interface (lo on Linux, lo0 on macOS)."""
    import socket

    return next((name for _, name in socket.if_nameindex() if name.startswith("lo")), "lo")


def wait_for(workers):
    """0 when every worker succeeds, else the first failure's status; workers still running then
    (or when the launcher is interrupted) are stopped. Their stderr passes through here, so the first
    failure's last line ends ours, whatever the others wrote as they lost it."""
    stderr = Stderr(workers)
    failed = None
    try:
        while True:
            codes = [w.poll() for w in workers]
            failed = next((k for k, c in enumerate(codes) if c not in (None, 0)), None)
            if failed is not None or all(c == 0 for c in codes):
                return 0 if failed is None else codes[failed]
            time.sleep(0.2)
    finally:
        for w in workers:
            if w.poll() is None:
                w.terminate()
        for w in workers:
            w.wait()
        stderr.close(failed)


class Stderr:
    """Copies each worker's stderr to ours as it comes (progress bars included), remembering who wrote
    last and each worker's last line."""

    def __init__(self, workers):
        self.lock, self.last_writer, self.tails = threading.Lock(), None, [b""] * len(workers)
        self.threads = [threading.Thread(target=self.copy, args=(k, w.stderr), daemon=True)
                        for k, w in enumerate(workers)]
        for thread in self.threads:
            thread.start()

    def copy(self, worker, stream):
        while chunk := stream.read1(1 << 16):
            with self.lock:
                sys.stderr.buffer.write(chunk)
                sys.stderr.buffer.flush()
                self.last_writer, self.tails[worker] = worker, (self.tails[worker] + chunk)[-4096:]

    def close(self, failed):
        """After the workers ended: repeat the failed worker's last line if another one wrote after it."""
        for thread in self.threads:
            thread.join()
        lines = self.tails[failed].decode(errors="replace").strip().splitlines() if failed is not None else []
        if lines and self.last_writer != failed:
            print(lines[-1], file=sys.stderr, flush=True)


@contextmanager
def session():
    """Inside: the workers' process group (NCCL on GPUs, gloo on CPUs), left at the end.

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
        # relaunch's workers meet at a file; torchrun's (several machines) through its environment
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo", init_method=os.environ.get(RENDEZVOUS),
                                rank=rank(), world_size=world_size())
    yield
    # Only after success: a failing process leaves at once with its error line (run_as_program), and
    # must not wait here for the others. Every process's last collective has finished everywhere
    # before the group goes: a gloo thread still finishing one needs the GIL the group's destructor holds.
    if joined and dist.is_initialized():
        dist.barrier(device_ids=[torch.cuda.current_device()] if torch.cuda.is_available() else None)
        dist.destroy_process_group()


def agree_on_min(value):
    """The smallest of every process's `value` (the value itself alone)."""
    import torch.distributed as dist

    if world_size() == 1:
        return value
    values = [None] * world_size()
    dist.all_gather_object(values, value)
    return min(values)


def average(tensors):
    """Each tensor averaged in place over the processes, as the data-parallel wrapper averages
    gradients: divided by the process count, then summed."""
    import torch.distributed as dist

    for tensor in tensors:
        tensor.div_(world_size())
        dist.all_reduce(tensor)


def gather(value):
    """Every process's `value`, in rank order, on the main process (None elsewhere)."""
    import torch.distributed as dist

    if world_size() == 1:
        return [value]
    gathered = [None] * world_size() if is_main() else None
    dist.gather_object(value, gathered, dst=0)
    return gathered
