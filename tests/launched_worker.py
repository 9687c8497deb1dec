"""Two workers started by `distributed.relaunch`, as a stage starts them, for tests/test_distributed.py:

    python -m tests.launched_worker OUT          # join, all-reduce, write what the processes listen on and
                                                 # whether distributed.average gives the wrapper's gradients
    python -m tests.launched_worker OUT --fail   # rank 1 stops with a PipelineError; rank 0 waits forever,
                                                 # writing to stderr
"""
import copy
import json
import sys
import time
from pathlib import Path

import psutil
import torch
import torch.distributed as dist

from stages.lib import distributed
from stages.lib.errors import PipelineError, cli, run_as_program


@cli
def main():
    out, fail = sys.argv[1], "--fail" in sys.argv
    distributed.relaunch("tests.launched_worker", sys.argv[1:], 2)
    with distributed.session():
        if fail and distributed.rank() == 1:
            raise PipelineError("worker 1: planted failure")
        while fail:  # blocked, as a worker waiting on a collective would be, and writing as it waits
            print("worker 0: still waiting", file=sys.stderr, flush=True)
            time.sleep(0.05)
        total = torch.ones(1)
        dist.all_reduce(total)
        listening = [c.laddr.ip for c in psutil.Process().net_connections("inet") if c.status == psutil.CONN_LISTEN]
        gathered = distributed.gather({"sum": total.item(), "listening": listening,
                                       "average_is_the_wrappers": average_is_the_wrappers()})
        if distributed.is_main():
            Path(out).write_text(json.dumps(gathered))


def average_is_the_wrappers():
    """Gradients of a different batch per process: the data-parallel wrapper's against
    `distributed.average` over the plain gradients (what CUDA graphs do with several processes)."""
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 4)
    twin = copy.deepcopy(model)
    batch = torch.randn(3, 8) * (distributed.rank() + 1)
    wrapped = torch.nn.parallel.DistributedDataParallel(model)  # kept: its reducer syncs in backward
    wrapped(batch).square().sum().backward()
    twin(batch).square().sum().backward()
    grads = [p.grad for p in twin.parameters()]
    distributed.average(grads)
    return all(torch.equal(a.grad, b) for a, b in zip(model.parameters(), grads))


if __name__ == "__main__":
    run_as_program(main)
