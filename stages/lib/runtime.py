"""Process-wide switches, set in one visible place: every model stage calls `configure()` first."""
import logging


def configure():
    import torch
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
