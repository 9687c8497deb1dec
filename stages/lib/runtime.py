"""Process-wide switches, set in one visible place: every model stage imports this module before its
other libraries and calls `configure()` first."""
import functools
import logging
from contextlib import contextmanager

import torch


@contextmanager
def compile_on_first_call():
    """Inside the block, `torch.compile` imports torch's compiler when the compiled function is first
    called, not when it is wrapped; it compiles on that first call either way."""
    compile_now = torch.compile

    def compile_later(model=None, **options):
        if model is None:  # used as @torch.compile(**options)
            return functools.partial(compile_later, **options)
        compiled = None

        @functools.wraps(model)
        def first_call_compiles(*args, **kwargs):
            nonlocal compiled
            if compiled is None:
                compiled = compile_now(model, **options)
            return compiled(*args, **kwargs)
        return first_call_compiles

    torch.compile = compile_later
    try:
        yield
    finally:
        torch.compile = compile_now


# bitsandbytes wraps its CPU kernels in torch.compile as it is imported, and so imports torch's
# compiler (seconds) in every process that loads a 4-bit model, although a GPU never runs those
# kernels. Imported here, before transformers or peft import it, it leaves that to their first call.
with compile_on_first_call():
    import bitsandbytes  # noqa: F401


def configure():
    from transformers.utils import logging as transformers_logging

    # Long work reports in plain progress lines (progress.py). tqdm bars ("Loading weights", hub
    # downloads) redraw with carriage returns, which flood a log file.
    transformers_logging.disable_progress_bar()
    # On CPUs with AVX512-BF16, bitsandbytes first tries a hub kernel (the `kernels` package) and warns
    # when it is absent; its own CPU kernels, which every stage here runs, need nothing more.
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    # cuDNN attention builds a plan for every new sequence length, milliseconds per layer call; with
    # length-grouped batches that is most batches. Flash and memory-efficient kernels need no plan.
    torch.backends.cuda.enable_cudnn_sdp(False)
