"""Two workers started by `distributed.relaunch`, as a stage starts them, for tests/test_distributed.py:

    python -m tests.launched_worker OUT          # join, all-reduce, write what the processes listen on
    python -m tests.launched_worker OUT --fail   # rank 1 stops with a PipelineError; rank 0 waits forever
"""
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
        if fail:
            time.sleep(600)  # blocked, as a worker waiting on a collective would be
        total = torch.ones(1)
        dist.all_reduce(total)
        listening = [c.laddr.ip for c in psutil.Process().net_connections("inet") if c.status == psutil.CONN_LISTEN]
        gathered = distributed.gather({"sum": total.item(), "listening": listening})
        if distributed.is_main():
            Path(out).write_text(json.dumps(gathered))


if __name__ == "__main__":
    run_as_program(main)
